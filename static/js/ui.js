// DOM lookups and rendering; no WebRTC or protocol logic lives here.
import { renderSVG } from "../vendor/uqr/uqr.mjs";

const byId = (id) => document.getElementById(id);

export const el = {
  camera: byId("camera"),
  flip: byId("flip"),
  framing: byId("framing"),
  mirror: byId("mirror"),
  resolution: byId("resolution"),
  start: byId("start"),
  stop: byId("stop"),
  local: byId("local"),
  remote: byId("remote"),
  promptForm: byId("prompt-form"),
  prompt: byId("prompt"),
  promptStatus: byId("prompt-status"),
  presets: document.querySelectorAll(".preset"),
  history: byId("history"),
  reroll: byId("reroll"),
  adapterRow: byId("adapter-row"),
  share: byId("share"),
  record: byId("record"),
  snapshot: byId("snapshot"),
  recBadge: byId("rec-badge"),
  recTime: byId("rec-time"),
  keepStatus: byId("keep-status"),
  keepText: byId("keep-text"),
  recDownload: byId("rec-download"),
  stage: byId("stage"),
  details: byId("details"),
  outputFrame: byId("output-frame"),
  cameraInset: byId("camera-inset"),
  layoutToggle: byId("layout-toggle"),
  fullscreen: byId("fullscreen"),
  pip: byId("pip"),
  shareQr: byId("share-qr"),
  shareRenew: byId("share-renew"),
  sharePanel: byId("share-panel"),
  shareLink: byId("share-link"),
  shareCopy: byId("share-copy"),
  shareRevoke: byId("share-revoke"),
  viewers: byId("viewers"),
  adapterStrength: byId("adapter-strength"),
  adapterValue: byId("adapter-value"),
  message: byId("message"),
};

export const formatMs = (n) => (Number.isFinite(n) ? `${Math.round(n)} ms` : "—");
const formatFps = (n) => (Number.isFinite(n) ? n.toFixed(1) : "—");
const setText = (id, text) => {
  byId(id).textContent = text;
};

/** kind: "insecure" | "permission" | "no-camera" | "server-full" | "engine" | "connection" | "auth"
 * | "reconnecting" | "engine-restarting" | "" */
export function showMessage(kind, text) {
  el.message.dataset.kind = kind;
  el.message.textContent = text;
}

export const clearMessage = () => showMessage("", "");

export function showConnectionState(state) {
  const indicator = byId("conn-state");
  indicator.dataset.state = state;
  indicator.textContent = ["reconnecting", "engine restarting"].includes(state) ? `${state}…` : state;
}

const ENGINE_KIND_LABELS = { preview: "Preview engine (CPU)", diffusion: "Diffusion engine" };
const ENGINE_STATE_LABELS = { starting: "starting", warming_up: "warming up", failed: "failed" };

export function showEngine(engine) {
  const kind = ENGINE_KIND_LABELS[engine.kind] ?? "Engine unknown";
  const state = ENGINE_STATE_LABELS[engine.state];
  setText("engine-name", [kind, engine.model, state].filter(Boolean).join(" · "));
  // Users must not mistake the preview filter for the real model, so say why plainly.
  const reason = byId("engine-reason");
  reason.textContent = engine.reason ?? "";
  reason.hidden = !(engine.reason && (engine.kind === "preview" || engine.state === "failed"));
  byId("engine-badge").dataset.kind = engine.kind ?? "";
  // The steadiness slider only means something when a temporal adapter is loaded.
  byId("adapter-row").hidden = !engine.adapter;
}

/** Toggles Start/Stop and keeps keyboard focus on whichever is usable. */
export function setStreaming(streaming) {
  const [from, to] = streaming ? [el.start, el.stop] : [el.stop, el.start];
  const hadFocus = document.activeElement === from;
  from.disabled = true;
  to.disabled = false;
  if (hadFocus) to.focus();
  if (!streaming) {
    setPromptStatus("", ""); // "applied in 40 ms" means nothing once the stream is gone
    setOutputLive(false);
  }
}

/** Record, Snapshot and Picture in picture need frames of the stylized stream. */
export function setOutputLive(live) {
  el.outputFrame.dataset.live = String(live);
  el.record.disabled = !live && el.record.getAttribute("aria-pressed") !== "true";
  el.snapshot.disabled = !live;
  el.pip.disabled = !live;
}

export function setCameraLive(live) {
  el.cameraInset.dataset.live = String(live);
}

/** Marks the preset and history chips whose text is the style on now. */
export function markPreset(prompt) {
  for (const chip of [...el.presets, ...el.history.children]) {
    chip.setAttribute("aria-pressed", String(chip.textContent === prompt));
  }
}

/** The user's own recent prompts (not the presets) as chips, newest first. */
export function showHistory(prompts, onPick) {
  el.history.replaceChildren(
    ...prompts.map((text) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "preset";
      chip.textContent = text;
      chip.addEventListener("click", () => onPick(text));
      return chip;
    }),
  );
  el.history.hidden = prompts.length === 0;
}

/** tone: "pending" | "ok" | "error" | "" (styling only). */
export function setPromptStatus(text, tone) {
  el.promptStatus.textContent = text;
  el.promptStatus.dataset.tone = tone;
}

export function showServerStats(stats, { withOverlayFps }) {
  setText("fps-in", formatFps(stats.fps_in));
  setText("fps-out", formatFps(stats.fps_out));
  setText("latency", formatMs(stats.latency_ms));
  setText("dropped", Number.isFinite(stats.dropped) ? String(stats.dropped) : "—");
  setText("overlay-latency", formatMs(stats.latency_ms));
  if (withOverlayFps) showOverlayFps(stats.fps_out);
}

export const showOverlayFps = (fps) => setText("overlay-fps", `${formatFps(fps)} fps`);
export const showRtt = (ms) => setText("rtt", formatMs(ms));
export const showPromptLatency = (ms) => setText("prompt-latency", formatMs(ms));

export function resetLiveReadouts() {
  for (const id of ["fps-in", "fps-out", "rtt", "latency", "dropped"]) setText(id, "—");
  setText("overlay-fps", "— fps");
  setText("overlay-latency", "— ms");
}

/** path: the watch link's path, or null when not sharing. A new link moves focus to the
 * panel (it sits below the Share button, where keyboard and screen reader users go next). */
export function showShare(path) {
  const link = path ? new URL(path, location.origin).href : "";
  const changed = link !== el.shareLink.value;
  el.sharePanel.hidden = !path;
  el.shareLink.value = link;
  el.share.textContent = path ? "Sharing" : "Share";
  el.share.setAttribute("aria-pressed", String(!!path));
  if (!changed) return;
  el.shareCopy.textContent = "Copy";
  el.shareQr.replaceChildren();
  if (!link) return;
  // uqr gives markup built from the link's bits only (no text from it), parsed as SVG.
  const svg = new DOMParser().parseFromString(renderSVG(link, { border: 2, pixelSize: 4 }), "image/svg+xml");
  el.shareQr.append(document.importNode(svg.documentElement, true));
  el.sharePanel.focus();
}

export function showViewers(count) {
  el.viewers.textContent = `${count} watching`;
}

/** The recording badge on the video and the line below the controls. */
export function showRecording(elapsedText) {
  el.recBadge.hidden = elapsedText === null;
  if (elapsedText !== null) el.recTime.textContent = elapsedText;
  el.record.setAttribute("aria-pressed", String(elapsedText !== null));
  el.record.textContent = elapsedText === null ? "Record" : `Stop recording (${elapsedText})`;
}

/** text: what was kept; download: {url, name} of a finished recording, or null. */
export function showKept(text, download = null) {
  el.keepStatus.hidden = !text;
  el.keepText.textContent = text;
  const old = el.recDownload.href;
  if (download || !text) {
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    el.recDownload.hidden = !download;
    el.recDownload.href = download?.url ?? "#";
    el.recDownload.download = download?.name ?? "";
  }
}
