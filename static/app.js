// livestyle page controller: wires the UI to the camera, the WebRTC session and
// the control channel protocol.
import { fillCameraPicker, openCamera, stopTracks } from "./js/camera.js";
import { AppError, CONNECTION_FAILED_MESSAGE, INSECURE_MESSAGE } from "./js/errors.js";
import { canMeasureFps, watchFps } from "./js/fps.js";
import {
  adapterStrengthMessage,
  createWatchMessage,
  parseMessage,
  pingMessage,
  PROTOCOL_VERSION,
  revokeWatchMessage,
  setPromptMessage,
} from "./js/protocol.js";
import { accessToken, Session } from "./js/session.js";
import * as ui from "./js/ui.js";

const PING_INTERVAL_MS = 1000;

const config = {
  ice_servers: [],
  max_prompt_chars: 500,
  default_prompt: "oil painting, vibrant colors",
};

let session = null; // live Session, null when stopped
let camera = null; // MediaStream from getUserMedia
let attempt = 0; // bumped by every teardown so an in-flight start() knows it was cancelled
let connectionState = "new";
let sessionId = null;
let lastStats = null;
let lastApplied = null;
let promptSeq = 0;
let adapterSeq = 0;
let latestSent = null; // {seq, sentAt} of the newest set_prompt
let activePrompt = ""; // what the user last applied
let offeredPrompt = ""; // what went out with /offer
let pingTimer = null;
let cameraSwitch = 0; // lets only the newest camera change win
let stopFpsWatch = () => {};

window.livestyle = {
  state: () => connectionState,
  stats: () => lastStats,
  lastApplied: () => lastApplied,
  sessionId: () => sessionId,
};

const isSecure = () => window.isSecureContext && !!navigator.mediaDevices;

function setConnectionState(state) {
  connectionState = state;
  ui.showConnectionState(state);
}

function showError(err) {
  const kind = err instanceof AppError ? err.kind : "connection";
  ui.showMessage(kind, err.message ?? String(err));
}

async function loadConfig() {
  try {
    const response = await fetch("/api/config", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    Object.assign(config, await response.json());
  } catch (err) {
    ui.showMessage("connection", `Could not load the server configuration (${err.message}). Is the server running?`);
  }
  if (config.protocol_version !== undefined && config.protocol_version !== PROTOCOL_VERSION) {
    console.warn(`server protocol v${config.protocol_version}, page speaks v${PROTOCOL_VERSION}`);
  }
  ui.el.prompt.maxLength = config.max_prompt_chars;
  if (!ui.el.prompt.value) ui.el.prompt.value = config.default_prompt;
  ui.showEngine(config.engine ?? {});
}

async function start() {
  if (!isSecure()) return ui.showMessage("insecure", INSECURE_MESSAGE);
  teardown();
  const myAttempt = attempt;
  ui.clearMessage();
  ui.setStreaming(true);
  setConnectionState("connecting");
  try {
    const stream = await openCamera(ui.el.camera.value);
    if (myAttempt !== attempt) return stopTracks(stream);
    camera = stream;
    ui.el.local.srcObject = stream;
    const track = stream.getVideoTracks()[0];
    await fillCameraPicker(ui.el.camera, track.getSettings().deviceId);

    const iceServers = await fetchIceServers();
    if (myAttempt !== attempt) return stopTracks(stream);
    session = new Session(iceServers, {
      onConnectionState: handleConnectionState,
      onTrack: showRemote,
      onChannelOpen: handleChannelOpen,
      onChannelClose: () => clearInterval(pingTimer),
      onMessage: handleMessage,
    });
    promptSeq = 0;
    latestSent = null;
    activePrompt = ui.el.prompt.value.trim() || config.default_prompt;
    offeredPrompt = activePrompt;
    const answer = await session.connect(track, offeredPrompt);
    if (myAttempt !== attempt) return;
    sessionId = answer.session_id ?? sessionId;
    if (answer.engine) ui.showEngine(answer.engine);
  } catch (err) {
    if (myAttempt !== attempt) return; // Stop was pressed meanwhile; nothing to report
    teardown();
    // Camera problems happen before any connection attempt.
    const cameraKinds = ["permission", "no-camera"];
    setConnectionState(cameraKinds.includes(err.kind) ? "new" : "failed");
    showError(err);
  }
}

/** Fresh ICE servers for each connection: TURN credentials from the server expire, and
 * a server with access tokens hands them only to a token holder. */
async function fetchIceServers() {
  const token = accessToken();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch("/api/ice-servers", { cache: "no-store", headers });
    if (response.ok) return (await response.json()).ice_servers ?? config.ice_servers;
  } catch {
    // The ones from /api/config still work for STUN and static TURN.
  }
  return config.ice_servers;
}

function stop() {
  teardown();
  setConnectionState("closed");
}

/** Releases the camera and the session; safe to call at any point. */
function teardown() {
  attempt++;
  clearInterval(pingTimer);
  stopFpsWatch();
  stopFpsWatch = () => {};
  session?.close();
  session = null;
  stopTracks(camera);
  camera = null;
  ui.el.local.srcObject = null;
  ui.el.remote.srcObject = null;
  ui.resetLiveReadouts();
  ui.setStreaming(false);
  ui.showShare(null); // the link dies with the session
  ui.el.share.disabled = true;
}

function handleConnectionState(state) {
  if (state === "failed") {
    teardown();
    ui.showMessage("connection", CONNECTION_FAILED_MESSAGE);
  }
  setConnectionState(state);
}

function showRemote(stream) {
  ui.el.remote.srcObject = stream;
  stopFpsWatch();
  stopFpsWatch = watchFps(ui.el.remote, ui.showOverlayFps);
}

function handleChannelOpen() {
  ui.el.share.disabled = false;
  pingTimer = setInterval(() => session?.send(pingMessage(performance.now())), PING_INTERVAL_MS);
  // The user may have applied a new prompt while we were connecting.
  if (activePrompt !== offeredPrompt) sendPrompt(activePrompt);
  if (!ui.el.adapterRow.hidden && Number(ui.el.adapterStrength.value) !== 1) sendAdapterStrength();
}

function handleMessage(data) {
  const msg = parseMessage(data);
  if (!msg) return console.warn("ignored control message", data);
  switch (msg.type) {
    case "hello":
      sessionId = msg.session_id;
      if (msg.engine) ui.showEngine(msg.engine);
      break;
    case "watch":
      ui.showShare(msg.path);
      break;
    case "viewers":
      ui.showViewers(msg.count);
      break;
    case "pong":
      ui.showRtt(performance.now() - msg.t);
      break;
    case "prompt_applied":
      handlePromptApplied(msg);
      break;
    case "stats":
      lastStats = msg;
      ui.showServerStats(msg, { withOverlayFps: !canMeasureFps });
      break;
    case "error":
      if (String(msg.code).startsWith("prompt")) ui.setPromptStatus(msg.message, "error");
      else ui.showMessage("engine", msg.message || `Engine error (${msg.code}).`);
      break;
  }
}

function handlePromptApplied(msg) {
  // Older prompts were superseded; only the newest one's outcome matters to the user.
  if (msg.seq !== latestSent?.seq) return;
  const clientMs = performance.now() - latestSent.sentAt;
  lastApplied = { seq: msg.seq, latency_ms: msg.latency_ms, client_ms: clientMs };
  ui.setPromptStatus(`applied in ${Math.round(clientMs)} ms (server ${ui.formatMs(msg.latency_ms)})`, "ok");
  ui.showPromptLatency(clientMs);
}

function sendPrompt(prompt) {
  latestSent = { seq: ++promptSeq, sentAt: performance.now() };
  session.send(setPromptMessage(prompt, latestSent.seq));
  ui.setPromptStatus("sending…", "pending");
}

function applyPrompt(text) {
  const prompt = text.trim();
  if (!prompt) return ui.setPromptStatus("Type a prompt first.", "error");
  activePrompt = prompt;
  if (session?.channelOpen) sendPrompt(prompt);
  else if (session) ui.setPromptStatus("Will be sent once connected.", "pending");
  else ui.setPromptStatus("Saved; it is used when you press Start.", "");
}

async function switchCamera() {
  if (!session || !camera) return; // the next Start uses the selection
  const previous = camera;
  const mySwitch = ++cameraSwitch;
  // Stop first: many phones cannot open two cameras at the same time.
  stopTracks(previous);
  try {
    const stream = await openCamera(ui.el.camera.value);
    // Stopped, or another camera was picked, while this one was opening.
    if (camera !== previous || mySwitch !== cameraSwitch) return stopTracks(stream);
    camera = stream;
    ui.el.local.srcObject = stream;
    await session.replaceTrack(stream.getVideoTracks()[0]);
  } catch (err) {
    if (camera === previous && mySwitch === cameraSwitch) showError(err);
  }
}

function sendAdapterStrength() {
  const value = Number(ui.el.adapterStrength.value);
  ui.el.adapterValue.textContent = value.toFixed(2);
  if (session?.channelOpen) session.send(adapterStrengthMessage(value, ++adapterSeq));
}

function bindEvents() {
  ui.el.start.addEventListener("click", start);
  ui.el.stop.addEventListener("click", stop);
  ui.el.camera.addEventListener("change", switchCamera);
  ui.el.adapterStrength.addEventListener("input", sendAdapterStrength);
  ui.el.share.addEventListener("click", () => session?.send(createWatchMessage()));
  ui.el.shareRevoke.addEventListener("click", () => session?.send(revokeWatchMessage()));
  ui.el.shareCopy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(ui.el.shareLink.value);
      ui.el.shareCopy.textContent = "Copied";
    } catch {
      ui.el.shareLink.select(); // clipboard needs HTTPS or localhost: let the user copy by hand
    }
  });
  // A form gives Enter-to-apply for free, including the mobile keyboard's action key.
  ui.el.promptForm.addEventListener("submit", (e) => {
    e.preventDefault();
    applyPrompt(ui.el.prompt.value);
  });
  for (const chip of ui.el.presets) {
    chip.addEventListener("click", () => {
      ui.el.prompt.value = chip.textContent;
      applyPrompt(chip.textContent);
    });
  }
  if (navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", () =>
      fillCameraPicker(ui.el.camera, camera?.getVideoTracks()[0]?.getSettings().deviceId),
    );
  }
}

async function init() {
  bindEvents();
  await loadConfig();
  if (!isSecure()) return ui.showMessage("insecure", INSECURE_MESSAGE);
  // Fills the picker right away when camera permission was granted on an earlier visit.
  await fillCameraPicker(ui.el.camera).catch(() => {});
}

init();
