"""Remote-use routes: watch links (viewer page + WHEP playback), WHIP ingest (RFC 9725)
with a small prompt-control endpoint, and ICE servers with short-lived TURN credentials.

WHIP/WHEP speak plain SDP over HTTP: POST application/sdp -> 201 Created, the answer SDP
as the body and the session resource in Location; DELETE on that resource ends it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiohttp import web

from server.config import ServerConfig
from server.errors import BadRequest
from server.keys import ACCESS, CONFIG, ENGINE, LIMITER, REGISTRY
from server.turn import turn_ice_server
from signaling.viewers import WatchNotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SDP = "application/sdp"
# Players and publishers on other origins (WHEP web players, browser WHIP clients) need CORS.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Link",
}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/whip", whip_publish)
    app.router.add_delete("/whip/{session_id}", whip_delete)
    app.router.add_post("/whip/{session_id}/prompt", whip_prompt)
    app.router.add_get("/watch/{token}", watch_page)
    app.router.add_post("/whep/{token}", whep_play)
    app.router.add_delete("/whep/{token}/{viewer_id}", whep_delete)
    app.router.add_get("/api/ice-servers", ice_servers)
    for path in ("/whip", "/whip/{session_id}", "/whep/{token}", "/whep/{token}/{viewer_id}"):
        app.router.add_route("OPTIONS", path, preflight)


def limit(request: web.Request) -> None:
    request.app[LIMITER].hit(request.remote or "unknown")


async def read_sdp(request: web.Request) -> str:
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(text=f"the body must be {SDP}, got {request.content_type or 'nothing'}")
    return await request.text()  # aiohttp enforces client_max_size -> 413


async def preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


async def whip_publish(request: web.Request) -> web.Response:
    request.app[ACCESS].require(request)
    limit(request)
    sdp = await read_sdp(request)
    prompt = request.query.get("prompt", request.app[CONFIG].default_prompt).strip()
    registry = request.app[REGISTRY]
    session, answer = await registry.create(sdp, "offer", prompt, kind="whip")
    link = registry.create_watch(session)
    headers = {
        **CORS,
        "Location": f"/whip/{session.id}",
        "Link": f'<{link.path}>; rel="alternate"; type="text/html", </whep/{link.token}>; rel="whep"',
    }
    return web.Response(status=201, body=answer.sdp.encode(), content_type=SDP, headers=headers)


def _whip_session(request: web.Request):  # type: ignore[no-untyped-def]
    request.app[ACCESS].require(request)
    session = request.app[REGISTRY].get(request.match_info["session_id"])
    if session is None or session.kind != "whip":
        raise web.HTTPNotFound(text="no such WHIP session")
    return session


async def whip_delete(request: web.Request) -> web.Response:
    session = _whip_session(request)
    await session.aclose("WHIP DELETE")
    return web.Response(status=200, headers=CORS)


async def whip_prompt(request: web.Request) -> web.Response:
    session = _whip_session(request)
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("bad_json", f"body is not valid JSON: {exc}") from None
    prompt = data.get("prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str):
        raise BadRequest("bad_request", 'body must be {"prompt": "..."}')
    limit_chars = request.app[ENGINE].info.max_prompt_chars
    if len(prompt.strip()) > limit_chars:
        raise BadRequest("prompt_too_long", f"prompt has {len(prompt.strip())} characters; at most {limit_chars}")
    seq = session.set_prompt(prompt.strip())
    return web.json_response({"seq": seq, "status": "queued"}, status=202, headers=CORS)


async def watch_page(request: web.Request) -> web.FileResponse:
    try:
        request.app[REGISTRY].resolve_watch(request.match_info["token"])
        status = 200
    except WatchNotFound:
        status = 404  # the page still loads and explains that the link has ended
    return web.FileResponse(STATIC_DIR / "watch.html", status=status, headers={"Cache-Control": "no-store"})


async def whep_play(request: web.Request) -> web.Response:
    limit(request)
    sdp = await read_sdp(request)
    token = request.match_info["token"]
    _session, viewer, answer = await request.app[REGISTRY].add_viewer(token, sdp)
    headers = {**CORS, "Location": f"/whep/{token}/{viewer.id}"}
    return web.Response(status=201, body=answer.encode(), content_type=SDP, headers=headers)


async def whep_delete(request: web.Request) -> web.Response:
    await request.app[REGISTRY].remove_viewer(request.match_info["token"], request.match_info["viewer_id"])
    return web.Response(status=200, headers=CORS)


def ice_server_list(config: ServerConfig) -> list[dict[str, object]]:
    """What a page's RTCPeerConnection gets: the configured servers plus, with a TURN secret,
    credentials that expire (fetched fresh for every connection)."""
    servers: list[dict[str, object]] = [s.to_json() for s in config.ice_servers]
    if config.turn is not None:
        servers.append(turn_ice_server(config.turn, "livestyle", time.time()))
    return servers


async def ice_servers(request: web.Request) -> web.Response:
    return web.json_response(
        {"ice_servers": ice_server_list(request.app[CONFIG])}, headers={"Cache-Control": "no-store"}
    )
