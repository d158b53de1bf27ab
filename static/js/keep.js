// Keeping the result: a recording of the stylized stream (MediaRecorder) and PNG
// snapshots of its current frame. Everything stays in the browser; nothing is uploaded.

// WebM plays in every browser that records it; Safari records only MP4.
const RECORDING_TYPES = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm", "video/mp4"];
// A timeslice keeps memory flat-ish and gives a file even when the stream dies mid-recording.
const TIMESLICE_MS = 1000;

export const canRecord = typeof MediaRecorder !== "undefined";

export function recordingType() {
  return RECORDING_TYPES.find((type) => MediaRecorder.isTypeSupported(type)) ?? "";
}

/** "2026-12-02-0415" in local time, for file names. */
function stamp(date = new Date()) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}-${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
}

export const formatDuration = (ms) => {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
};

/** One recording of a MediaStream. onTick(elapsedMs) once a second while recording. */
export class Recording {
  constructor(stream, onTick) {
    this.type = recordingType();
    this.recorder = new MediaRecorder(stream, this.type ? { mimeType: this.type } : {});
    this.chunks = [];
    this.startedAt = performance.now();
    this.recorder.addEventListener("dataavailable", (e) => {
      if (e.data.size > 0) this.chunks.push(e.data);
    });
    this.done = new Promise((resolve) => this.recorder.addEventListener("stop", () => resolve(this.file())));
    this.timer = setInterval(() => onTick(performance.now() - this.startedAt), 250);
    this.recorder.start(TIMESLICE_MS);
  }

  get recording() {
    return this.recorder.state !== "inactive";
  }

  /** Resolves with {blob, name, durationMs} once the recorder has flushed. */
  stop() {
    clearInterval(this.timer);
    this.durationMs = performance.now() - this.startedAt;
    if (this.recording) this.recorder.stop();
    return this.done;
  }

  file() {
    clearInterval(this.timer);
    const type = (this.recorder.mimeType || this.type || "video/webm").split(";")[0];
    const blob = new Blob(this.chunks, { type });
    const ext = type === "video/mp4" ? "mp4" : "webm";
    return { blob, name: `livestyle-${stamp()}.${ext}`, durationMs: this.durationMs ?? 0 };
  }
}

/** The video's current frame as a PNG blob, at the stream's own size (512x512 from the engine). */
export function snapshot(video) {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("no frame to snapshot"))), "image/png"),
  );
}

export const snapshotName = () => `livestyle-${stamp()}.png`;

/** Saves a blob through a temporary link (a download, never an upload). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
