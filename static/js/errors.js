// User-facing errors. `kind` ends up in #message's data-kind so the page (and
// tests) can tell the failure classes apart.

export class AppError extends Error {
  /** status: the HTTP status (0 when the server could not be reached); retryAfterS: its
   * Retry-After; code: the server's error code, if it sent one. */
  constructor(kind, message, { status = null, retryAfterS = null, code = null } = {}) {
    super(message);
    this.name = "AppError";
    this.kind = kind;
    this.status = status;
    this.retryAfterS = retryAfterS;
    this.code = code;
  }

  /** Refused for lack of room here (full, or draining before a stop): in a fleet, the next
   * offer may well land on another server, so it is worth trying again at once. */
  get busy() {
    return this.status === 503 && (this.code === "server_full" || this.code === "server_draining");
  }

  /** Worth trying again by itself: the server was unreachable, busy, full or restarting. */
  get transient() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

export const INSECURE_MESSAGE =
  "Camera access needs HTTPS (or http://localhost). Open this page over HTTPS " +
  "or run the server with TLS (--tls-cert/--tls-key).";

export const CONNECTION_LOST_MESSAGE = "Lost the connection to the server, reconnecting…";
export const ENGINE_RESTARTING_MESSAGE =
  "The engine is restarting… The video continues by itself as soon as it is back.";

export const CONNECTION_FAILED_MESSAGE =
  "The video connection failed. UDP traffic between your browser and the server is " +
  "probably blocked by a firewall or NAT; allow UDP or configure a TURN server, then press Start again.";

export function cameraError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new AppError(
        "permission",
        "Camera permission was denied. Allow camera access in the browser's site settings and press Start again.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new AppError(
        "no-camera",
        "No camera was found. Connect a camera (or pick another one in the list) and press Start again.",
      );
    case "NotReadableError":
      return new AppError(
        "no-camera",
        "The camera could not be started; another application may be using it. Close it and press Start again.",
      );
    default:
      return new AppError("no-camera", `Could not open the camera: ${err?.message ?? err}`);
  }
}

/** Maps a non-200 /offer response ({"error": {"code", "message"}}) to an AppError;
 * retryAfter: the response's Retry-After header (seconds), if any. */
export function offerError(status, body, retryAfter = null) {
  const code = body?.error?.code ?? "";
  const message = body?.error?.message;
  const seconds = Number.parseFloat(retryAfter);
  const details = { status, retryAfterS: Number.isFinite(seconds) ? seconds : null, code: code || null };
  if (status === 401) {
    return new AppError(
      "auth",
      "This server needs an access token. Open the link you were given (it ends with #token=…).",
      details,
    );
  }
  if (status === 429) {
    return new AppError(
      "server-full",
      "Too many attempts from this address; wait a minute and press Start again.",
      details,
    );
  }
  if (code === "server_draining") {
    return new AppError("server-full", message ?? "The server is stopping. Try again in a moment.", details);
  }
  if (code === "server_full") {
    return new AppError("server-full", message ?? "The server is full. Try again in a minute.", details);
  }
  if (code.startsWith("engine")) {
    return new AppError("engine", message ?? "The stylization engine is unavailable.", details);
  }
  return new AppError("connection", message ?? `The server refused the connection (HTTP ${status}).`, details);
}
