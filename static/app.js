// livestyle page controller: wires the UI to the camera, the WebRTC session and
// the control channel protocol, and keeps the stream going when the server goes away
// (reconnecting with backoff, restoring the prompt) or its engine restarts.
import { fillCameraPicker, openCamera, stopTracks } from "./js/camera.js";
import { frameCamera } from "./js/framing.js";
import {
  AppError,
  CONNECTION_FAILED_MESSAGE,
  CONNECTION_LOST_MESSAGE,
  ENGINE_RESTARTING_MESSAGE,
  INSECURE_MESSAGE,
} from "./js/errors.js";
import { canMeasureFps, watchFps } from "./js/fps.js";
import { canRecord, formatDuration, Recording, saveBlob, snapshot, snapshotName } from "./js/keep.js";
import {
  adapterStrengthMessage,
  createWatchMessage,
  parseMessage,
  pingMessage,
  PROTOCOL_VERSION,
  revokeWatchMessage,
  rerollMessage,
  setPromptMessage,
} from "./js/protocol.js";
import { Heartbeat, retryDelayMs } from "./js/reconnect.js";
import { accessToken, closeLeftoverSession, Session } from "./js/session.js";
import { setupStage } from "./js/stage.js";
import * as ui from "./js/ui.js";

// Longer than any working ICE (LAN or TURN); the server drops unconnected peers after ~8 s.
const CONNECT_TIMEOUT_MS = 12_000;
// Browsers report "disconnected" for short network blips that recover by themselves.
const DISCONNECTED_GRACE_MS = 2000;
// A slider being dragged fires dozens of input events a second; the server rate-limits.
const ADAPTER_SEND_INTERVAL_MS = 100;
// "engine restarting" clears once frames were presented for this long after the error.
const RESTART_CLEAR_MS = 1000;
// The user's own recent prompts kept as chips (and in localStorage): a short list.
const HISTORY_MAX = 8;
const HISTORY_KEY = "livestyle-prompt-history";

const config = {
  ice_servers: [],
  max_prompt_chars: 500,
  default_prompt: "oil painting, vibrant colors",
};

let session = null; // live Session, null when stopped or between reconnect attempts
let camera = null; // MediaStream from getUserMedia; kept across reconnects
let framed = { stream: null, stop: () => {} }; // what is sent: the camera cropped or fitted, maybe mirrored
let facing = "user"; // front or back camera, for the Front/back button
let attempt = 0; // bumped whenever a session is abandoned, so in-flight work knows
let connectionState = "new";
let everConnected = false; // since Start: tells "lost the server" from "could not connect"
let retries = 0; // reconnect attempts since the last good connection
let reconnects = 0; // successful reconnects since Start (window.livestyle, for tests)
let retryTimer = null;
let connectTimer = null;
let disconnectTimer = null;
let restartingSince = null; // performance.now() of an engine_restarting error, until frames flow
let sessionId = null;
let lastStats = null;
let lastApplied = null;
let promptSeq = 0;
let adapterSeq = 0;
let adapterTimer = null;
let adapterPending = false;
let latestSent = null; // {seq, sentAt} of the newest set_prompt
let activePrompt = ""; // what the user last applied
let offeredPrompt = ""; // what went out with /offer
let cameraSwitch = 0; // lets only the newest camera change win
let stopFpsWatch = () => {};
let resumeOnShow = false; // streaming when the page went into the back/forward cache
let recording = null; // Recording of the stylized stream, while one runs
let watchAnswers = 0; // "watch" messages received (window.livestyle, for tests)
let rerollSeq = 0;
let takeSeed = null; // the seed of the last reroll: a reconnect asks for the same take
const heartbeat = new Heartbeat((t) => session?.send(pingMessage(t)), () => connectionLost());

window.livestyle = {
  state: () => connectionState,
  stats: () => lastStats,
  lastApplied: () => lastApplied,
  sessionId: () => sessionId,
  reconnects: () => reconnects,
  recording: () => recording?.recording ?? false,
  watchAnswers: () => watchAnswers,
  seed: () => takeSeed,
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

// ---- starting, connecting, reconnecting ----

async function start() {
  if (!isSecure()) return ui.showMessage("insecure", INSECURE_MESSAGE);
  teardown();
  const myAttempt = attempt;
  ui.clearMessage();
  ui.setStreaming(true);
  setConnectionState("connecting");
  activePrompt = ui.el.prompt.value.trim() || config.default_prompt;
  try {
    const stream = await openCamera(ui.el.camera.value, cameraOptions());
    if (myAttempt !== attempt) return stopTracks(stream);
    camera = stream;
    reframe();
    await refreshPicker();
  } catch (err) {
    if (myAttempt !== attempt) return; // Stop was pressed meanwhile; nothing to report
    teardown();
    setConnectionState("new"); // camera problems happen before any connection attempt
    return showError(err);
  }
  await connect();
}

/** One connection attempt with the camera we have: a fresh Session and /offer. */
async function connect() {
  const myAttempt = attempt;
  const iceServers = await fetchIceServers();
  if (myAttempt !== attempt) return;
  session = new Session(iceServers, {
    onConnectionState: handleConnectionState,
    onTrack: showRemote,
    onChannelOpen: handleChannelOpen,
    onChannelClose: () => connectionLost(),
    onMessage: handleMessage,
  });
  promptSeq = 0;
  latestSent = null;
  offeredPrompt = activePrompt;
  connectTimer = setTimeout(() => connectFailed(), CONNECT_TIMEOUT_MS);
  try {
    const answer = await session.connect(framed.stream.getVideoTracks()[0], offeredPrompt);
    if (myAttempt !== attempt) return;
    sessionId = answer.session_id ?? sessionId;
    if (answer.engine) ui.showEngine(answer.engine);
  } catch (err) {
    if (myAttempt !== attempt) return; // Stop was pressed, or this attempt was abandoned
    if (everConnected && err instanceof AppError && err.transient) return retryLater(err);
    teardown();
    setConnectionState("failed");
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

/** The attempt never reached "connected". */
function connectFailed() {
  if (everConnected) return connectionLost();
  // On the first connect this is what a firewall blocking UDP looks like.
  teardown();
  setConnectionState("failed");
  ui.showMessage("connection", CONNECTION_FAILED_MESSAGE);
}

/** The server went away (or the path to it): drop the session, keep the camera, retry. */
function connectionLost() {
  if (!session || !everConnected) return;
  dropSession();
  showRemoteStream(null); // a frozen last frame would look like a live stream
  retryLater(null);
}

function retryLater(err) {
  dropSession();
  const delay = retryDelayMs(retries++, err?.retryAfterS);
  setConnectionState("reconnecting");
  const why = err ? ` ${err.message}` : "";
  const when = `attempt ${retries} in ${Math.ceil(delay / 1000)} s`;
  ui.showMessage("reconnecting", `${CONNECTION_LOST_MESSAGE}${why} (${when})`);
  const myAttempt = attempt;
  retryTimer = setTimeout(() => {
    if (myAttempt === attempt) connect();
  }, delay);
}

/** Abandons the current session (if any) without touching the camera or the UI. */
function dropSession() {
  attempt++;
  heartbeat.stop();
  for (const timer of [retryTimer, connectTimer, disconnectTimer]) clearTimeout(timer);
  retryTimer = connectTimer = disconnectTimer = null;
  stopFpsWatch();
  stopFpsWatch = () => {};
  finishRecording(); // its track ends with the session: keep what was recorded
  session?.close();
  session = null;
  ui.el.share.disabled = true;
  ui.el.reroll.disabled = true;
  ui.showShare(null); // the link dies with the session
}

function stop() {
  teardown();
  ui.clearMessage();
  setConnectionState("closed");
}

/** Releases the camera and the session; safe to call at any point. */
function teardown() {
  dropSession();
  everConnected = false;
  retries = 0;
  reconnects = 0;
  restartingSince = null;
  takeSeed = null; // a new Start is a fresh take
  stopTracks(camera);
  camera = null;
  framed.stop();
  framed = { stream: null, stop: () => {} };
  showLocal(null);
  showRemoteStream(null);
  ui.resetLiveReadouts();
  ui.setStreaming(false);
}

function handleConnectionState(state) {
  if (state === "connected") {
    clearTimeout(connectTimer);
    clearTimeout(disconnectTimer);
    disconnectTimer = null;
    if (everConnected && retries > 0) reconnects++;
    everConnected = true;
    retries = 0;
    if (["reconnecting", "connection"].includes(ui.el.message.dataset.kind)) ui.clearMessage();
    setConnectionState("connected");
  } else if (state === "failed") {
    connectFailed();
  } else if (state === "disconnected") {
    disconnectTimer ??= setTimeout(() => connectionLost(), DISCONNECTED_GRACE_MS);
    setConnectionState("disconnected");
  } else if (connectionState !== "reconnecting") {
    setConnectionState(state);
  }
}

function showLocal(stream) {
  ui.el.local.srcObject = stream;
  ui.setCameraLive(!!stream);
}

function showRemoteStream(stream) {
  ui.el.remote.srcObject = stream;
  if (!stream) ui.setOutputLive(false); // frames arriving mark it live (see bindEvents)
}

function showRemote(stream) {
  showRemoteStream(stream);
  stopFpsWatch();
  stopFpsWatch = watchFps(ui.el.remote, (fps) => {
    ui.showOverlayFps(fps);
    // Frames flow again after an engine restart: the watch covers the last second only.
    if (fps > 0 && restartingSince !== null && performance.now() - restartingSince > RESTART_CLEAR_MS) {
      engineBack();
    }
  });
}

function handleChannelOpen() {
  ui.el.share.disabled = false;
  ui.el.reroll.disabled = false;
  if (takeSeed !== null) session.send(rerollMessage(++rerollSeq, takeSeed)); // the same take after a reconnect
  heartbeat.start();
  // The user may have applied a new prompt while we were (re)connecting.
  if (activePrompt !== offeredPrompt) sendPrompt(activePrompt);
  if (!ui.el.adapterRow.hidden && Number(ui.el.adapterStrength.value) !== 1) sendAdapterStrength();
}

// ---- control messages ----

function handleMessage(data) {
  const msg = parseMessage(data);
  if (!msg) return console.warn("ignored control message", data);
  switch (msg.type) {
    case "hello":
      sessionId = msg.session_id;
      if (msg.engine) ui.showEngine(msg.engine);
      break;
    case "watch":
      watchAnswers++;
      ui.showShare(msg.path);
      break;
    case "seed":
      if (msg.seq === rerollSeq) {
        takeSeed = msg.seed;
        ui.setPromptStatus(`New take (seed ${msg.seed}).`, "ok");
      }
      break;
    case "viewers":
      ui.showViewers(msg.count);
      break;
    case "pong":
      heartbeat.pong();
      ui.showRtt(performance.now() - msg.t);
      break;
    case "prompt_applied":
      handlePromptApplied(msg);
      break;
    case "stats":
      lastStats = msg;
      ui.showServerStats(msg, { withOverlayFps: !canMeasureFps });
      // Without requestVideoFrameCallback the server's output rate says frames flow again.
      if (!canMeasureFps && msg.fps_out > 0 && performance.now() - (restartingSince ?? Infinity) > 2000) {
        engineBack();
      }
      break;
    case "error":
      handleError(msg);
      break;
  }
}

function handleError(msg) {
  const code = String(msg.code);
  if (code === "engine_restarting") {
    restartingSince = performance.now();
    setConnectionState("engine restarting");
    ui.showMessage("engine-restarting", ENGINE_RESTARTING_MESSAGE);
  } else if (code === "server_draining") {
    retryLater(new AppError("connection", msg.message || "This server is stopping.")); // another one takes over
  } else if (code === "rate_limited") {
    ui.setPromptStatus("Too many changes at once; the last ones were dropped. Try again.", "error");
  } else if (code.startsWith("prompt")) {
    ui.setPromptStatus(msg.message, "error");
  } else {
    ui.showMessage("engine", msg.message || `Engine error (${code}).`);
  }
}

function engineBack() {
  restartingSince = null;
  if (ui.el.message.dataset.kind === "engine-restarting") ui.clearMessage();
  if (connectionState === "engine restarting") setConnectionState("connected");
}

function handlePromptApplied(msg) {
  // Older prompts were superseded; only the newest one's outcome matters to the user.
  if (msg.seq !== latestSent?.seq) return;
  const clientMs = performance.now() - latestSent.sentAt;
  lastApplied = { seq: msg.seq, latency_ms: msg.latency_ms, client_ms: clientMs };
  ui.setPromptStatus(`applied in ${Math.round(clientMs)} ms (server ${ui.formatMs(msg.latency_ms)})`, "ok");
  ui.markPreset(activePrompt);
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
  remember(prompt);
  ui.markPreset(prompt);
  if (session?.channelOpen) sendPrompt(prompt);
  else if (camera) ui.setPromptStatus("Will be sent once connected.", "pending");
  else ui.setPromptStatus("Saved; it is used when you press Start.", "");
}

function pickPrompt(text) {
  ui.el.prompt.value = text;
  applyPrompt(text);
}

function loadHistory() {
  try {
    const saved = JSON.parse(localStorage.getItem(HISTORY_KEY) ?? "[]");
    return Array.isArray(saved) ? saved.filter((p) => typeof p === "string").slice(0, HISTORY_MAX) : [];
  } catch {
    return [];
  }
}

/** Newest first, no duplicates, no presets (they have chips already), at most HISTORY_MAX. */
function remember(prompt) {
  if ([...ui.el.presets].some((chip) => chip.textContent === prompt)) return;
  const history = [prompt, ...loadHistory().filter((p) => p !== prompt)].slice(0, HISTORY_MAX);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  ui.showHistory(history, pickPrompt);
}

function reroll() {
  if (!session?.channelOpen) return;
  session.send(rerollMessage(++rerollSeq));
  ui.setPromptStatus("New take…", "pending");
}

/** The picker shows the camera in use; Front/back only where there are two or more. */
async function refreshPicker() {
  await fillCameraPicker(ui.el.camera, camera?.getVideoTracks()[0]?.getSettings().deviceId);
  ui.el.flip.hidden = Number(ui.el.camera.dataset.count ?? 0) < 2;
}

function cameraOptions() {
  return { resolution: ui.el.resolution.value, facing };
}

/** Frames the camera as chosen (crop or fit, mirrored or not) and sends that; between
 * reconnects the next offer takes it. */
function reframe() {
  if (!camera) return;
  const old = framed;
  framed = frameCamera(camera, { fit: ui.el.framing.value === "fit", mirror: ui.el.mirror.getAttribute("aria-pressed") === "true" });
  showLocal(framed.stream);
  try {
    session?.replaceTrack(framed.stream.getVideoTracks()[0])?.catch(() => {});
  } catch {
    // No sender yet: the offer being made takes the new track instead (connect reads `framed`).
  }
  if (old.stream !== framed.stream) old.stop();
}

async function switchCamera() {
  if (!camera) return; // the next Start uses the selection
  const previous = camera;
  const mySwitch = ++cameraSwitch;
  // Stop first: many phones cannot open two cameras at the same time.
  stopTracks(previous);
  try {
    const stream = await openCamera(ui.el.camera.value, cameraOptions());
    // Stopped, or another camera was picked, while this one was opening.
    if (camera !== previous || mySwitch !== cameraSwitch) return stopTracks(stream);
    camera = stream;
    reframe();
    await refreshPicker();
  } catch (err) {
    if (camera === previous && mySwitch === cameraSwitch) showError(err);
  }
}

function sendAdapterStrength() {
  if (session?.channelOpen) session.send(adapterStrengthMessage(Number(ui.el.adapterStrength.value), ++adapterSeq));
}

/** At most one adapter message per ADAPTER_SEND_INTERVAL_MS while the slider moves; the
 * last position always goes out. */
function adapterInput() {
  ui.el.adapterValue.textContent = Number(ui.el.adapterStrength.value).toFixed(2);
  if (adapterTimer !== null) {
    adapterPending = true;
    return;
  }
  sendAdapterStrength();
  adapterTimer = setTimeout(() => {
    adapterTimer = null;
    if (adapterPending) {
      adapterPending = false;
      adapterInput();
    }
  }, ADAPTER_SEND_INTERVAL_MS);
}

// ---- keeping the result ----

function toggleRecording() {
  if (recording) return finishRecording();
  const stream = ui.el.remote.srcObject;
  if (!canRecord || !stream) return;
  try {
    recording = new Recording(stream, (ms) => ui.showRecording(formatDuration(ms)));
  } catch (err) {
    return ui.showKept(`Recording is not possible in this browser (${err.message}).`);
  }
  ui.showRecording("0:00");
  ui.showKept("Recording… nothing leaves this device.");
}

/** Stops a running recording and offers its file; nothing is uploaded. */
async function finishRecording() {
  if (!recording) return;
  const done = recording;
  recording = null;
  ui.showRecording(null);
  ui.setOutputLive(ui.el.remote.videoWidth > 0 && !!ui.el.remote.srcObject);
  const { blob, name, durationMs } = await done.stop();
  const size = `${(blob.size / 1e6).toFixed(1)} MB`;
  ui.showKept(`Recorded ${formatDuration(durationMs)} (${size}).`, { url: URL.createObjectURL(blob), name });
}

async function takeSnapshot() {
  try {
    saveBlob(await snapshot(ui.el.remote), snapshotName());
    ui.showKept("Snapshot saved as a PNG.");
  } catch (err) {
    ui.showKept(`No snapshot: ${err.message}.`);
  }
}

// ---- wiring ----

function bindEvents() {
  ui.el.start.addEventListener("click", start);
  ui.el.stop.addEventListener("click", stop);
  ui.el.camera.addEventListener("change", switchCamera);
  ui.el.resolution.addEventListener("change", switchCamera);
  ui.el.framing.addEventListener("change", reframe);
  ui.el.mirror.addEventListener("click", () => {
    const on = ui.el.mirror.getAttribute("aria-pressed") !== "true";
    ui.el.mirror.setAttribute("aria-pressed", String(on));
    reframe();
  });
  // Phones: front and back by facingMode; a picked camera id would override it.
  ui.el.flip.addEventListener("click", () => {
    facing = facing === "user" ? "environment" : "user";
    ui.el.camera.value = "";
    switchCamera();
  });
  ui.el.adapterStrength.addEventListener("input", adapterInput);
  // The server answers with the live link again (links already sent keep working).
  ui.el.share.addEventListener("click", () => {
    if (!ui.el.sharePanel.hidden) ui.el.sharePanel.focus();
    session?.send(createWatchMessage());
  });
  ui.el.shareRenew.addEventListener("click", () => session?.send(createWatchMessage({ renew: true })));
  ui.el.record.addEventListener("click", toggleRecording);
  ui.el.snapshot.addEventListener("click", takeSnapshot);
  // Live once frames are decoded; a reconnect's new stream starts over (showRemoteStream).
  for (const event of ["loadeddata", "resize"]) {
    ui.el.remote.addEventListener(event, () => {
      if (ui.el.remote.srcObject && ui.el.remote.videoWidth > 0) ui.setOutputLive(true);
    });
  }
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
  for (const chip of ui.el.presets) chip.addEventListener("click", () => pickPrompt(chip.textContent));
  ui.el.reroll.addEventListener("click", reroll);
  if (navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", () =>
      refreshPicker(),
    );
  }
  // pagehide is the one unload event mobile browsers reliably fire. Closing the session
  // sends its close beacon, so a reload gets the seat back at once.
  addEventListener("pagehide", () => {
    resumeOnShow = camera !== null;
    teardown();
  });
  // Restored from the back/forward cache: the session was closed on pagehide, so restart.
  addEventListener("pageshow", (e) => {
    if (e.persisted && resumeOnShow) start();
  });
}

async function init() {
  closeLeftoverSession(); // before anything else asks for a seat
  setupStage({
    stage: ui.el.stage,
    inset: ui.el.cameraInset,
    output: ui.el.outputFrame,
    remote: ui.el.remote,
    layoutToggle: ui.el.layoutToggle,
    fullscreen: ui.el.fullscreen,
    pip: ui.el.pip,
  });
  ui.el.record.hidden = !canRecord;
  bindEvents();
  await loadConfig();
  ui.showHistory(loadHistory(), pickPrompt);
  ui.markPreset(ui.el.prompt.value.trim());
  // The frame-rate overlay is a number for the curious: shown with the details open.
  ui.el.details.addEventListener("toggle", () => (ui.el.stage.dataset.details = String(ui.el.details.open)));
  if (!isSecure()) return ui.showMessage("insecure", INSECURE_MESSAGE);
  // Fills the picker right away when camera permission was granted on an earlier visit.
  await refreshPicker().catch(() => {});
}

init();
