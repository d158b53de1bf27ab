// Camera access and the camera picker.
import { cameraError } from "./errors.js";

export async function openCamera(deviceId) {
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
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
  if (!cameras.some((c) => c.label)) return;
  select.replaceChildren(
    ...cameras.map((c, i) => new Option(c.label || `Camera ${i + 1}`, c.deviceId)),
  );
  if (activeDeviceId) select.value = activeDeviceId;
}
