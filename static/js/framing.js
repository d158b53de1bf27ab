// Framing of the camera before it goes to the server: the engine works on 512x512, and a
// 16:9 webcam centre-cropped to a square loses 44 % of its width. "fit" draws the whole
// picture with bars instead; "mirror" flips it (a front camera that acts like a mirror).
// Crop without mirror sends the camera's own track (the server crops), at no cost here.

const SIZE = 512; // what the engine gets either way
const FPS = 30;

/** Returns {stream, stop()} with the framed track; the camera stream itself when no
 * drawing is needed. */
export function frameCamera(camera, { fit, mirror }) {
  if (!fit && !mirror) return { stream: camera, stop: () => {} };
  const source = document.createElement("video");
  source.muted = true;
  source.playsInline = true;
  source.srcObject = camera;
  source.play().catch(() => {});
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SIZE;
  const ctx = canvas.getContext("2d");
  let stopped = false;
  let handle = null;
  const draw = () => {
    const w = source.videoWidth;
    const h = source.videoHeight;
    if (w && h) {
      // cover: the shorter side fills the square; contain: the longer side does.
      const scale = fit ? Math.min(SIZE / w, SIZE / h) : Math.max(SIZE / w, SIZE / h);
      const dw = w * scale;
      const dh = h * scale;
      ctx.setTransform(mirror ? -1 : 1, 0, 0, 1, mirror ? SIZE : 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, SIZE, SIZE);
      ctx.drawImage(source, (SIZE - dw) / 2, (SIZE - dh) / 2, dw, dh);
    }
    schedule();
  };
  // Each camera frame once where the browser says when one arrives; a timer elsewhere.
  const schedule = () => {
    if (stopped) return;
    if ("requestVideoFrameCallback" in source) handle = source.requestVideoFrameCallback(draw);
    else handle = setTimeout(draw, 1000 / FPS);
  };
  schedule();
  const stream = canvas.captureStream(FPS);
  return {
    stream,
    stop() {
      stopped = true;
      if ("cancelVideoFrameCallback" in source) source.cancelVideoFrameCallback(handle);
      clearTimeout(handle);
      stream.getTracks().forEach((t) => t.stop());
      source.srcObject = null;
    },
  };
}
