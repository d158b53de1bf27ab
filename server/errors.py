"""The one mapping from errors to HTTP responses: every error is JSON
{"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from pipeline.client import EngineUnavailable
from server.access import RateLimited, Unauthorized
from server.keys import MAX_BODY
from signaling.protocol import ProtocolError
from signaling.registry import BadOffer, SessionLimitReached
from signaling.viewers import ViewersFull, WatchNotFound

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """The request body is not what the endpoint takes; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, exc.code, exc.message)
    except BadOffer as exc:
        return error_response(400, "bad_offer", str(exc))
    except ProtocolError as exc:  # a control request over HTTP (WHIP prompt): same codes as the data channel
        if exc.code == "rate_limited":
            retry = str(max(1, math.ceil(exc.retry_after_s or 1)))
            return error_response(429, exc.code, exc.message, {"Retry-After": retry})
        return error_response(400, exc.code, exc.message)
    except Unauthorized:
        return error_response(
            401, "unauthorized", "a valid access token is required", {"WWW-Authenticate": 'Bearer realm="livestyle"'}
        )
    except RateLimited as exc:
        retry = str(max(1, round(exc.retry_after_s)))
        return error_response(429, "rate_limited", "too many requests; slow down", {"Retry-After": retry})
    except WatchNotFound as exc:
        return error_response(404, "not_found", str(exc))
    except ViewersFull as exc:
        return error_response(503, "viewers_full", str(exc), {"Retry-After": "30"})
    except SessionLimitReached as exc:
        return error_response(503, "server_full", str(exc), {"Retry-After": "30"})
    except EngineUnavailable as exc:
        return error_response(503, "engine_unavailable", f"the stylization engine is unavailable: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            limit = request.app[MAX_BODY] if MAX_BODY in request.app else None
            message = f"request body is too large (limit {limit} bytes)" if limit else exc.reason
        else:
            message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
