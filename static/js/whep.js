// WHEP (WebRTC-HTTP egress protocol) viewer: one receive-only peer connection,
// negotiated by POSTing an SDP offer to the endpoint and released with DELETE on
// the resource URL the server returns in Location.
import { AppError } from "./errors.js";
import { waitForIceGathering } from "./session.js";

const ICE_GATHERING_TIMEOUT_MS = 5000;

export const LINK_ENDED_MESSAGE = "This stream has ended: the broadcaster stopped or revoked the link.";
export const VIEWERS_FULL_MESSAGE = "This stream has the maximum number of viewers; try again later.";

export class WhepViewer {
  /**
   * handlers: onConnectionState(state), onTrack(stream), onRemoteEnd() (the server closed
   * the connection or the track). None fire after close(), so closing our own
   * connection never looks like the stream ending.
   */
  constructor(iceServers, handlers) {
    this.closed = false;
    this.resourceUrl = null; // absolute URL of our viewer resource once the server accepted us
    const call = (name) => (...args) => {
      if (!this.closed) handlers[name](...args);
    };
    this.pc = new RTCPeerConnection({ iceServers });
    this.pc.addEventListener("connectionstatechange", () =>
      call("onConnectionState")(this.pc.connectionState),
    );
    this.pc.addEventListener("track", (e) => {
      e.track.addEventListener("ended", call("onRemoteEnd"));
      // A server that closes its side sends a DTLS close_notify; reacting to it ends the
      // page at once instead of waiting for ICE consent to time out (~5 s) plus our grace.
      const dtls = e.receiver.transport; // absent in older browsers; the other signals remain
      dtls?.addEventListener("statechange", () => {
        if (dtls.state === "closed" || dtls.state === "failed") call("onRemoteEnd")();
      });
      call("onTrack")(e.streams[0] ?? new MediaStream([e.track]));
    });
  }

  /** Negotiates with POST `endpoint`; throws AppError (kind "ended" | "full" | "error" | "connection"). */
  async connect(endpoint) {
    this.pc.addTransceiver("video", { direction: "recvonly" });
    await this.pc.setLocalDescription(await this.pc.createOffer());
    // The server does not trickle ICE, so the offer must already hold every candidate.
    await waitForIceGathering(this.pc);
    if (this.closed) return;
    const { sdp, resourceUrl } = await postOffer(endpoint, this.pc.localDescription.sdp);
    this.resourceUrl = resourceUrl;
    if (this.closed) {
      // Stopped while the POST was in flight: give the seat back right away.
      deleteResource(resourceUrl);
      return;
    }
    await this.pc.setRemoteDescription({ type: "answer", sdp });
  }

  /** Releases the server-side viewer (if any) and the peer connection; safe to call twice. */
  close() {
    if (this.closed) return;
    this.closed = true;
    deleteResource(this.resourceUrl);
    for (const transceiver of this.pc.getTransceivers()) transceiver.stop?.();
    this.pc.close();
  }
}

/** DELETE with keepalive so it still goes out while the page unloads. */
function deleteResource(url) {
  if (!url) return;
  fetch(url, { method: "DELETE", keepalive: true }).catch(() => {}); // best effort; the server times viewers out too
}

async function postOffer(endpoint, offerSdp) {
  let response;
  try {
    response = await fetch(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: offerSdp,
      cache: "no-store",
    });
  } catch (err) {
    throw new AppError("connection", `Could not reach the server (${err.message}).`);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw whepError(response.status, body);
  }
  const sdp = await response.text();
  if (!sdp.startsWith("v=")) throw new AppError("error", "The server sent an invalid answer.");
  // Location is usually relative (/whep/<token>/<viewer-id>); resolve it against the endpoint.
  const location = response.headers.get("Location");
  return { sdp, resourceUrl: location ? new URL(location, response.url).href : null };
}

/** Maps a failed POST (error JSON {"error": {"code", "message"}}) to an AppError. */
export function whepError(status, body) {
  const code = body?.error?.code ?? "";
  const message = body?.error?.message;
  if (status === 404) return new AppError("ended", LINK_ENDED_MESSAGE);
  if (status === 503 && code === "viewers_full") return new AppError("full", VIEWERS_FULL_MESSAGE);
  return new AppError("error", message ?? `The server refused to start the stream (HTTP ${status}).`);
}
