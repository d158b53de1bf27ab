// DOM lookups and rendering; no WebRTC or protocol logic lives here.

const byId = (id) => document.getElementById(id);

export const el = {
  camera: byId("camera"),
  start: byId("start"),
  stop: byId("stop"),
  local: byId("local"),
  remote: byId("remote"),
  promptForm: byId("prompt-form"),
  prompt: byId("prompt"),
  promptStatus: byId("prompt-status"),
  presets: document.querySelectorAll(".preset"),
  adapterRow: byId("adapter-row"),
  share: byId("share"),
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

/** path: the watch link's path, or null when not sharing. */
export function showShare(path) {
  el.sharePanel.hidden = !path;
  el.shareLink.value = path ? new URL(path, location.origin).href : "";
}

export function showViewers(count) {
  el.viewers.textContent = `${count} watching`;
}
