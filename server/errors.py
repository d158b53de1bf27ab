"""The one mapping from errors to HTTP responses: every error is JSON
{"error": {"code": ..., "message": ...}} with a 4xx status for anything a client caused;
5xx only for the server's own state (full, engine down) or a bug (500, logged once with
its traceback)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from pipeline.client import EngineUnavailable
from server.access import RateLimited, Unauthorized
from server.keys import MAX_BODY
from signaling.protocol import ProtocolError
from signaling.registry import BadOffer, Draining, SessionLimitReached
from signaling.trickle import BadFragment, IceRestartUnsupported, StaleIceSession
from signaling.viewers import ViewersFull, WatchNotFound

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A request the server will not serve, with its status, a stable code and a message
    for the client. close: end the connection after the answer (the request's framing is
    not trustworthy any more, e.g. a body that never arrived)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, *, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.close = close


class BadRequest(HttpError):
    """The request body is not what the endpoint takes; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}
# Headers of aiohttp's own HTTP exceptions that the JSON answer keeps (405 must say Allow).
_KEPT_HEADERS = (hdrs.ALLOW, hdrs.RETRY_AFTER)


def _from_exception(request: web.Request, exc: Exception) -> web.Response | None:
    """The answer for a known error, None for an unexpected one."""
    if isinstance(exc, HttpError):
        response = error_response(exc.status, exc.code, exc.message, exc.headers)
        if exc.close:
            response.force_close()
        return response
    if isinstance(exc, BadOffer):
        return error_response(400, "bad_offer", str(exc))
    if isinstance(exc, ProtocolError):  # a control request over HTTP (WHIP prompt): the data channel's codes
        if exc.code == "rate_limited":
            retry = str(max(1, math.ceil(exc.retry_after_s or 1)))
            return error_response(429, exc.code, exc.message, {hdrs.RETRY_AFTER: retry})
        return error_response(400, exc.code, exc.message)
    if isinstance(exc, BadFragment):
        return error_response(400, "bad_fragment", str(exc))
    if isinstance(exc, IceRestartUnsupported):  # RFC 9725 4.3.1: 422 for the PATCH kind not supported
        return error_response(422, "ice_restart_unsupported", str(exc))
    if isinstance(exc, StaleIceSession):
        return error_response(412, "precondition_failed", str(exc))
    if isinstance(exc, Unauthorized):
        return error_response(
            401, "unauthorized", "a valid access token is required", {hdrs.WWW_AUTHENTICATE: 'Bearer realm="livestyle"'}
        )
    if isinstance(exc, RateLimited):
        retry = str(max(1, round(exc.retry_after_s)))
        return error_response(429, "rate_limited", "too many requests; slow down", {hdrs.RETRY_AFTER: retry})
    if isinstance(exc, WatchNotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, ViewersFull):
        return error_response(503, "viewers_full", str(exc), {hdrs.RETRY_AFTER: "30"})
    if isinstance(exc, Draining):  # soon: the Service's other pods take it
        return error_response(503, "server_draining", str(exc), {hdrs.RETRY_AFTER: "2"})
    if isinstance(exc, SessionLimitReached):
        return error_response(503, "server_full", str(exc), {hdrs.RETRY_AFTER: "30"})
    if isinstance(exc, EngineUnavailable):
        return error_response(503, "engine_unavailable", f"the stylization engine is unavailable: {exc}")
    if isinstance(exc, ConnectionError) and (request.transport is None or request.transport.is_closing()):
        # The client went away mid-request (reset, closed tab): nobody reads this answer.
        log.debug("client left during %s %s: %s", request.method, request.path, exc)
        return error_response(400, "client_disconnected", "the connection was lost")
    return None


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 413:
        limit = request.app[MAX_BODY] if MAX_BODY in request.app else None
        message = f"request body is too large (limit {limit} bytes)" if limit else exc.reason
    else:
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
    headers = {str(name): exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except Exception as exc:
        response = _from_exception(request, exc)
        if response is not None:
            return response
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error; see the server log")


class HttpServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's connection handler reports to. Malformed HTTP from a client (a bad
    request line, headers over the size limits, broken chunking) is answered 400 by aiohttp's
    parser before any route runs; that is the client's problem, so it is one debug line here
    instead of an error with a traceback. Everything else keeps its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            text = f"{msg}" % args if args else f"{msg}"
            self.debug("%s: %d %.200r", text, exc_info.code, exc_info.message)
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)
