// livestyle viewer page controller: plays one broadcaster's stylized stream through a
// watch link (/watch/<token>) over WHEP. Receive-only: no camera, no control channel.
import { AppError } from "./js/errors.js";
import { canMeasureFps, watchFps } from "./js/fps.js";
import { minimisePlayoutDelay } from "./js/session.js";
import { LINK_ENDED_MESSAGE, WhepViewer } from "./js/whep.js";

// A brief network blip reports "disconnected" and then recovers; only a longer
// silence means the broadcaster (or the server) went away.
const DISCONNECT_GRACE_MS = 5000;
// How often the style and viewer count beside the video are refreshed.
const INFO_INTERVAL_MS = 5000;

const STREAM_ENDED_MESSAGE = "This stream has ended.";
const NO_TOKEN_MESSAGE =
  "This page needs a complete watch link, like /watch/<token>. Ask the broadcaster to copy their link again.";
const CONNECT_FAILED_MESSAGE =
  "The video connection could not be established. UDP traffic between your browser and the server " +
  "is probably blocked by a firewall or NAT; try another network, or ask the operator to configure a TURN server.";
const NO_WEBRTC_MESSAGE = "This browser does not support WebRTC, which is needed to watch the stream.";

const el = {
  status: document.getElementById("status"),
  message: document.getElementById("message"),
  video: document.getElementById("remote"),
  fps: document.getElementById("fps"),
  fpsOverlay: document.getElementById("fps-overlay"),
  toggle: document.getElementById("toggle"),
  info: document.getElementById("watch-info"),
  style: document.getElementById("watch-style"),
  viewers: document.getElementById("watch-viewers"),
  player: document.querySelector(".watch-player"),
};

const token = tokenFromPath(location.pathname);
let iceServers = [];
let viewer = null; // live WhepViewer, null when not watching
let attempt = 0; // bumped by every teardown so an in-flight start() knows it was cancelled
let state = "new"; // "new" | "connecting" | "live" | "ended" | "error"
let wasLive = false; // tells "the stream ended" apart from "never connected"
let lastFps = 0;
let disconnectTimer = null;
let stopFpsWatch = () => {};
let infoTimer = null;

window.livestyleWatch = {
  state: () => state,
  fps: () => lastFps,
  resource: () => viewer?.resourceUrl ?? null, // the WHEP viewer URL that Stop DELETEs
  linkEnded: () => state === "ended" && el.toggle.hidden,
};

/** The last path segment of /watch/<token>; "" when the link is incomplete or mangled. */
function tokenFromPath(pathname) {
  const segments = pathname.split("/").filter(Boolean);
  const last = segments.at(-1) ?? "";
  // Opened as /watch/ or as the bare file: there is no token to use.
  if (segments.length < 2 || last.endsWith(".html")) return "";
  try {
    return decodeURIComponent(last);
  } catch {
    return ""; // malformed %-escape
  }
}

// ---- rendering ----

function setState(next) {
  state = next;
  el.status.dataset.state = next;
  el.status.textContent = next;
  el.toggle.textContent = next === "connecting" || next === "live" ? "Stop" : "Watch";
}

/** kind: "ended" | "full" | "error" | "connection" | "" */
function showMessage(kind, text) {
  el.message.dataset.kind = kind;
  el.message.textContent = text;
}

function showFps(fps) {
  lastFps = fps;
  el.fps.textContent = `${fps.toFixed(1)} fps`;
}

function resetFps() {
  lastFps = 0;
  el.fps.textContent = "— fps";
}

/** The link is dead for good (revoked, expired, broadcaster gone): nothing to retry. */
function linkEnded(text = LINK_ENDED_MESSAGE) {
  teardown();
  clearInterval(infoTimer);
  el.info.hidden = true;
  el.toggle.hidden = true;
  el.player.hidden = true; // an empty black square would look like a stream about to start
  setState("ended");
  showMessage("ended", text);
}

/** The style on now and the viewer count; false once the link has ended (404). */
async function refreshInfo() {
  try {
    const response = await fetch(`/watch/${encodeURIComponent(token)}/info`, { cache: "no-store" });
    if (response.status === 404) return false;
    if (!response.ok) return true; // a hiccup, not the end
    const info = await response.json();
    el.style.textContent = String(info.prompt ?? "");
    el.viewers.textContent = `${info.viewers} watching`;
    el.info.hidden = false;
  } catch {
    // Offline for a moment: the video's own connection tells us if it is over.
  }
  return true;
}

// ---- watching ----

async function loadIceServers() {
  // The watch link is the viewer's credential for TURN on a server with access tokens.
  // Without a response (401 once the link has ended, or an older server) the browser's
  // own host candidates still work on the same network.
  try {
    const response = await fetch("/api/ice-servers", {
      cache: "no-store",
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) return [];
    const body = await response.json();
    return Array.isArray(body?.ice_servers) ? body.ice_servers : [];
  } catch {
    return [];
  }
}

async function start() {
  if (!token) return;
  teardown();
  const myAttempt = attempt;
  wasLive = false;
  showMessage("", "");
  setState("connecting");
  try {
    if (typeof RTCPeerConnection === "undefined") throw new AppError("error", NO_WEBRTC_MESSAGE);
    viewer = new WhepViewer(iceServers, {
      onConnectionState: handleConnectionState,
      onTrack: showStream,
      onRemoteEnd: streamLost,
    });
    await viewer.connect(`/whep/${encodeURIComponent(token)}`);
  } catch (err) {
    if (myAttempt !== attempt) return; // Stop was pressed meanwhile; nothing to report
    teardown();
    const kind = err instanceof AppError ? err.kind : "error";
    if (kind === "ended") return linkEnded(err.message);
    setState("error");
    showMessage(kind, err.message ?? String(err));
  }
}

/** The user pressed Stop: leave quietly. */
function stop() {
  teardown();
  showMessage("", "");
  setState("ended");
}

/** Releases the viewer (DELETE + close) and the video; safe to call at any point. */
function teardown() {
  attempt++;
  clearTimeout(disconnectTimer);
  disconnectTimer = null;
  stopFpsWatch();
  stopFpsWatch = () => {};
  viewer?.close();
  viewer = null;
  el.video.srcObject = null;
  resetFps();
}

/** The connection dropped or the server closed it: the broadcaster left or revoked the link. */
async function streamLost() {
  teardown();
  if (wasLive) {
    setState("ended");
    showMessage("ended", STREAM_ENDED_MESSAGE);
    // Revoked or the broadcaster left: the link is dead and Watch would only fail.
    if (!(await refreshInfo())) linkEnded();
  } else {
    setState("error");
    showMessage("connection", CONNECT_FAILED_MESSAGE);
  }
}

function handleConnectionState(pcState) {
  if (pcState === "connected") {
    clearTimeout(disconnectTimer);
    disconnectTimer = null;
    wasLive = true;
    setState("live");
    refreshInfo(); // the count now includes this viewer
  } else if (pcState === "failed") {
    streamLost(); // terminal: without an ICE restart it never recovers
  } else if (pcState === "disconnected" && disconnectTimer === null) {
    disconnectTimer = setTimeout(streamLost, DISCONNECT_GRACE_MS);
  }
}

function showStream(stream) {
  for (const receiver of viewer?.pc.getReceivers() ?? []) minimisePlayoutDelay(receiver);
  el.video.srcObject = stream;
  // Muted autoplay normally needs no gesture; where it is still blocked (e.g. iOS
  // Low Power Mode) the native controls give the user a play button.
  el.video.play().catch((err) => {
    if (err.name === "NotAllowedError") el.video.controls = true;
  });
  stopFpsWatch();
  stopFpsWatch = watchFps(el.video, showFps);
}

// ---- wiring ----

function bindEvents() {
  el.toggle.addEventListener("click", () => (state === "connecting" || state === "live" ? stop() : start()));
  // pagehide is the one unload event mobile browsers reliably fire; beforeunload covers
  // the rest. Both end in a keepalive DELETE so the seat is freed at once.
  addEventListener("pagehide", teardown);
  addEventListener("beforeunload", teardown);
  // Restored from the back/forward cache: the connection was closed on pagehide, so rejoin.
  addEventListener("pageshow", (e) => {
    if (e.persisted && token) start();
  });
}

async function init() {
  bindEvents();
  el.fpsOverlay.hidden = !canMeasureFps;
  if (!token) {
    el.toggle.disabled = true;
    setState("error");
    showMessage("error", NO_TOKEN_MESSAGE);
    return;
  }
  if (!(await refreshInfo())) return linkEnded();
  infoTimer = setInterval(async () => {
    if (state === "live" && !(await refreshInfo())) linkEnded();
  }, INFO_INTERVAL_MS);
  iceServers = await loadIceServers();
  await start();
}

init();
