// Camera access and the camera picker.
import { cameraError } from "./errors.js";

// Ideal capture sizes (a hint: the browser picks the nearest its camera has). The engine
// works on 512x512 either way; more pixels mean a sharper crop or fit, and more CPU here.
export const RESOLUTIONS = {
  "480": { width: 640, height: 480 },
  "720": { width: 1280, height: 720 },
  "1080": { width: 1920, height: 1080 },
};

/** options: resolution (a RESOLUTIONS key), facing ("user" | "environment"; used when no
 * camera is picked by id, as phones name their front and back cameras that way). */
export async function openCamera(deviceId, { resolution = "480", facing = null } = {}) {
  const size = RESOLUTIONS[resolution] ?? RESOLUTIONS["480"];
  const video = { width: { ideal: size.width }, height: { ideal: size.height }, frameRate: { ideal: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
  else if (facing) video.facingMode = { ideal: facing };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (err) {
    throw cameraError(err);
  }
}

export function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

/**
 * Refills the picker. Browsers only reveal camera labels (and often ids) after
 * permission was granted, so before that the "Default camera" entry is kept.
 */
export async function fillCameraPicker(select, activeDeviceId) {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((d) => d.kind === "videoinput" && d.deviceId);
  select.dataset.count = String(cameras.length);
  if (!cameras.some((c) => c.label)) return;
  select.replaceChildren(
    ...cameras.map((c, i) => new Option(c.label || `Camera ${i + 1}`, c.deviceId)),
  );
  if (activeDeviceId) select.value = activeDeviceId;
}
