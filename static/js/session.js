// One WebRTC session with the server: the camera track goes up, the stylized
// track comes back, and JSON control messages use the "control" data channel.
import { AppError, offerError } from "./errors.js";
import { CHANNEL_LABEL } from "./protocol.js";
import { OFFER_RETRIES, offerRetryDelayMs } from "./reconnect.js";

const ICE_GATHERING_TIMEOUT_MS = 5000;
// The live session's close beacon, kept per tab: a page that died without its pagehide
// (a crashed tab, a killed browser restoring it) frees its old seat when it loads again.
const BEACON_KEY = "livestyle-close-beacon";

export class Session {
  /**
   * handlers: onConnectionState(state), onTrack(stream), onChannelOpen(),
   * onChannelClose(), onMessage(data). None fire after close().
   */
  constructor(iceServers, handlers) {
    this.closed = false;
    this.closeBeacon = null; // {url, secret} from the answer, until sent
    const call = (name) => (...args) => {
      if (!this.closed) handlers[name](...args);
    };
    this.pc = new RTCPeerConnection({ iceServers });
    this.pc.addEventListener("connectionstatechange", () =>
      call("onConnectionState")(this.pc.connectionState),
    );
    this.pc.addEventListener("track", (e) => {
      minimisePlayoutDelay(e.receiver);
      call("onTrack")(e.streams[0] ?? new MediaStream([e.track]));
    });
    // Created before createOffer so the offer carries the data channel (SCTP) section.
    this.channel = this.pc.createDataChannel(CHANNEL_LABEL, { ordered: true });
    this.channel.addEventListener("open", call("onChannelOpen"));
    this.channel.addEventListener("close", call("onChannelClose"));
    this.channel.addEventListener("message", (e) => call("onMessage")(e.data));
  }

  get channelOpen() {
    return this.channel.readyState === "open";
  }

  /** Negotiates with POST /offer; resolves with the server's answer JSON. */
  async connect(track, prompt) {
    this.sender = this.pc.addTransceiver(track, { direction: "sendrecv" }).sender;
    await this.pc.setLocalDescription(await this.pc.createOffer());
    // The server does not trickle ICE, so the offer must already hold every candidate.
    await waitForIceGathering(this.pc);
    const offer = { sdp: this.pc.localDescription.sdp, type: "offer", prompt };
    const answer = await postOfferWithRetries(offer, () => this.closed);
    this.closeBeacon = { url: answer.close_url, secret: answer.close_secret };
    sessionStorage.setItem(BEACON_KEY, JSON.stringify(this.closeBeacon));
    if (this.closed) this.sendCloseBeacon(); // stopped while the offer was in flight
    else await this.pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    return answer;
  }

  /** Tells the server this session is over, so its slot frees at once even when the page
   * is unloading (sendBeacon outlives the page) or the peer connection is already dead. */
  sendCloseBeacon() {
    const beacon = this.closeBeacon;
    this.closeBeacon = null;
    if (beacon) {
      sessionStorage.removeItem(BEACON_KEY);
      sendBeacon(beacon);
    }
  }

  send(text) {
    if (this.channelOpen) this.channel.send(text);
  }

  replaceTrack(track) {
    return this.sender.replaceTrack(track);
  }

  close() {
    this.closed = true;
    this.sendCloseBeacon();
    this.channel.close();
    for (const transceiver of this.pc.getTransceivers()) transceiver.stop?.();
    this.pc.close();
  }
}

/** Ask the browser to play a received track with as little buffering as it allows: the
 * stylized video is live, so every frame held back is latency. A hint, not a setting;
 * network jitter still makes the browser keep what it needs. */
export function minimisePlayoutDelay(receiver) {
  if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = 0; // milliseconds (the standard)
  if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = 0; // seconds (older Chrome)
}

function sendBeacon(beacon) {
  if (typeof beacon?.url === "string" && typeof beacon.secret === "string") {
    navigator.sendBeacon(beacon.url, beacon.secret);
  }
}

/** Closes the session an earlier page in this tab left behind without saying goodbye. */
export function closeLeftoverSession() {
  const saved = sessionStorage.getItem(BEACON_KEY);
  sessionStorage.removeItem(BEACON_KEY);
  try {
    if (saved) sendBeacon(JSON.parse(saved));
  } catch {
    // Not ours to worry about: the server reaps that session within seconds anyway.
  }
}

/** The server does not trickle ICE: offers go out once gathering is complete. */
export function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    // Some networks never finish gathering; the candidates found so far usually suffice.
    const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
    function onChange() {
      if (pc.iceGatheringState === "complete") done();
    }
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    }
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

/** The access token, when the page was opened as /#token=... (a fragment never reaches
 * server logs); kept for the tab's lifetime. */
export function accessToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("livestyle-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search); // keep it out of shared URLs
  }
  return sessionStorage.getItem("livestyle-token");
}

/** Full or draining: try again a few times (the same offer: nothing was set up for it)
 * before the caller hears of it; stops as soon as the session is closed. */
async function postOfferWithRetries(offer, isClosed) {
  for (let n = 0; ; n++) {
    try {
      return await postOffer(offer);
    } catch (err) {
      if (!(err instanceof AppError) || !err.busy || n >= OFFER_RETRIES || isClosed()) throw err;
      await new Promise((resolve) => setTimeout(resolve, offerRetryDelayMs(n)));
      if (isClosed()) throw err;
    }
  }
}

async function postOffer(offer) {
  let response;
  const headers = { "Content-Type": "application/json" };
  const token = accessToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    response = await fetch("/offer", { method: "POST", headers, body: JSON.stringify(offer) });
  } catch (err) {
    throw new AppError("connection", `Could not reach the server (${err.message}).`, { status: 0 });
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw offerError(response.status, body, response.headers.get("Retry-After"));
  if (body?.type !== "answer" || typeof body.sdp !== "string") {
    throw new AppError("connection", "The server sent an invalid answer.");
  }
  return body;
}
