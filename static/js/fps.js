// Measures the frame rate a <video> actually presents, i.e. what the user sees,
// which can be lower than what the server sends (decode or render drops).

export const canMeasureFps = "requestVideoFrameCallback" in HTMLVideoElement.prototype;

/** Calls onFps(fps) once a second; returns a function that stops measuring. */
export function watchFps(video, onFps) {
  if (!canMeasureFps) return () => {};
  let presented = null; // latest metadata.presentedFrames
  let handle = video.requestVideoFrameCallback(function onFrame(_now, meta) {
    presented = meta.presentedFrames;
    handle = video.requestVideoFrameCallback(onFrame);
  });
  // Sampling on a timer (rather than per frame) also reports 0 when the stream stalls.
  let lastCount = presented;
  let lastTime = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    if (presented !== null && lastCount !== null) {
      onFps(((presented - lastCount) * 1000) / (now - lastTime));
    }
    lastCount = presented;
    lastTime = now;
  }, 1000);
  return () => {
    clearInterval(timer);
    video.cancelVideoFrameCallback(handle);
  };
}
