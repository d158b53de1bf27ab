// Keeping a session alive: the control-channel heartbeat that notices a vanished server
// quickly, and the backoff schedule for reconnecting to it.

export const PING_INTERVAL_MS = 1000;
// A pong this late means the server (or the path to it) is gone; ICE would take far longer.
export const PONG_TIMEOUT_MS = 3000;
const CHECK_INTERVAL_MS = 250;

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const RETRY_AFTER_MAX_MS = 60_000;

/**
 * Pings every second and calls onLost() once when a ping went unanswered for
 * PONG_TIMEOUT_MS. Only pings actually sent count: a throttled background tab whose timer
 * fired late is not mistaken for a lost server.
 */
export class Heartbeat {
  constructor(sendPing, onLost) {
    this.sendPing = sendPing;
    this.onLost = onLost;
    this.waitingSince = null; // performance.now() of the oldest unanswered ping
    this.lastPing = -Infinity;
    this.timer = null;
  }

  start() {
    this.stop();
    this.timer = setInterval(() => this.tick(), CHECK_INTERVAL_MS);
    this.tick();
  }

  tick() {
    const now = performance.now();
    if (this.waitingSince !== null && now - this.waitingSince >= PONG_TIMEOUT_MS) {
      this.stop();
      this.onLost();
    } else if (now - this.lastPing >= PING_INTERVAL_MS) {
      this.lastPing = now;
      this.waitingSince ??= now;
      this.sendPing(now);
    }
  }

  /** A pong arrived: the server is there. */
  pong() {
    this.waitingSince = null;
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.waitingSince = null;
    this.lastPing = -Infinity;
  }
}

/**
 * Milliseconds before reconnect attempt `n` (0-based): exponential backoff with jitter, so
 * many pages that lost one server do not all come back in the same instant. A server's
 * Retry-After (seconds, from a 503 or 429) is honoured when it asks for longer.
 */
export function retryDelayMs(n, retryAfterS = null) {
  const exponential = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** n);
  let delay = exponential * (0.5 + Math.random() * 0.5);
  if (Number.isFinite(retryAfterS) && retryAfterS > 0) {
    delay = Math.max(delay, Math.min(RETRY_AFTER_MAX_MS, retryAfterS * 1000) * (1 + Math.random() * 0.2));
  }
  return Math.round(delay);
}

// An offer refused as full or draining is retried this many times before the page says so:
// behind a fleet's Service the next one may reach a server with room.
export const OFFER_RETRIES = 3;
const OFFER_RETRY_BASE_MS = 250;

/** Milliseconds before offer retry `n` (0-based): short and jittered (250-500, 500-1000,
 * 1000-2000 ms), so the page connects well within its connect timeout and pages refused
 * together do not all come back together. The server's Retry-After is for reconnects. */
export function offerRetryDelayMs(n) {
  return Math.round(OFFER_RETRY_BASE_MS * 2 ** n * (1 + Math.random()));
}
