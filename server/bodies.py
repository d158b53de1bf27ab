"""Request bodies: read once, in full, within the body timeout (a middleware, so every
route, unknown ones included, is covered), then decoded strictly by the route: JSON for
the page's endpoints, SDP and trickle-ICE fragments (UTF-8 text) for WHIP/WHEP."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from server.errors import BadRequest, Handler, HttpError
from server.keys import CONFIG

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
# A JSON body for this server never needs a number this long; Python's own limit (4300
# digits) would surface as an unrelated-sounding error.
MAX_NUMBER_CHARS = 64


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reads the whole body (aiohttp caps it at client_max_size -> 413) before the route runs,
    so a body that trickles in, or is shorter than its Content-Length, ends in 408 after
    body_timeout_s instead of holding the connection."""
    if request.body_exists:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Decompression is off (a small body could expand without bound): say so plainly.
            message = f"compressed request bodies are not accepted (Content-Encoding {encoding[:40]!r})"
            raise HttpError(415, "unsupported_encoding", message)
        timeout = request.app[CONFIG].body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await request.read()
        except TimeoutError:
            raise HttpError(
                408, "request_timeout", f"the request body did not arrive in full within {timeout:g} s", close=True
            ) from None
        except (RequestPayloadError, HttpProcessingError) as exc:
            raise HttpError(400, "bad_body", f"the request body is malformed: {_cause(exc)}", close=True) from None
    return await handler(request)


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc
    return getattr(inner, "message", None) or str(inner) or type(inner).__name__


def require_type(request: web.Request, media_type: str) -> None:
    """415 unless the body is declared as `media_type` (parameters such as charset aside)."""
    if request.content_type == media_type and hdrs.CONTENT_TYPE in request.headers:
        return
    given = request.headers.get(hdrs.CONTENT_TYPE, "")
    accept = "Accept-Patch" if request.method == hdrs.METH_PATCH else "Accept-Post"
    raise HttpError(
        415,
        "unsupported_media_type",
        f"the body must be {media_type}, got {given[:80]!r}" if given else f"the body must be {media_type}",
        {accept: media_type},
    )


async def read_text(request: web.Request, what: str) -> str:
    """The body as UTF-8 text (SDP is UTF-8 whatever charset the request claims)."""
    body = await request.read()
    if not body.strip():
        raise BadRequest("empty_body", f"the request body is empty; send {what}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("bad_encoding", f"the body is not valid UTF-8 (byte {exc.start})") from None


async def read_sdp(request: web.Request, media_type: str = SDP) -> str:
    require_type(request, media_type)
    return await read_text(request, "an SDP offer" if media_type == SDP else "an SDP fragment")


def _number(text: str, parse: type[int] | type[float]) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number has {len(text)} characters; at most {MAX_NUMBER_CHARS} are accepted")
    value = parse(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: web.Request, what: str) -> Any:
    """The body parsed as JSON (any declared content type: `curl -d` says form-urlencoded)."""
    text = await read_text(request, what)
    try:
        return json.loads(
            text,
            parse_int=lambda s: _number(s, int),
            parse_float=lambda s: _number(s, float),
            parse_constant=_constant,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest("bad_json", f"body is not valid JSON: {reason}") from None
