"""Remote-use routes: watch links (viewer page + WHEP playback), WHIP ingest (RFC 9725)
with a small prompt-control endpoint, and ICE servers with short-lived TURN credentials.

WHIP/WHEP speak plain SDP over HTTP: POST application/sdp -> 201 Created, the answer SDP
as the body, the session resource in Location and its ICE session in ETag; PATCH with an
application/trickle-ice-sdpfrag body trickles candidates (204; an ICE restart is refused
with 422, as RFC 9725 names it); DELETE ends it. Every answer under /whip and /whep, errors
included, carries the CORS headers, so browser clients on other origins can read it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiohttp import hdrs, web

from server.access import Unauthorized, bearer, client_key
from server.bodies import SDP, SDPFRAG, read_json, read_sdp, read_text, require_type
from server.cluster import place
from server.config import ServerConfig
from server.errors import BadRequest, Handler
from server.keys import CONFIG, ENGINE, GATE, REGISTRY
from server.turn import turn_ice_server
from signaling.session import Session
from signaling.viewers import Viewer, WatchNotFound

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CORS_PREFIXES = ("/whip", "/whep")
# Players and publishers on other origins (WHEP web players, browser WHIP clients) need CORS;
# `*` is safe: nothing here relies on cookies, the token travels in Authorization.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Accept-Post, Retry-After, WWW-Authenticate",
}
CORS_REQUEST_HEADERS = "Authorization, Content-Type, If-Match"


def add_routes(app: web.Application) -> None:
    # path -> (method -> handler, what the resource says it accepts in OPTIONS)
    routes: dict[str, tuple[dict[str, Handler], dict[str, str]]] = {
        "/whip": ({"POST": whip_publish}, {"Accept-Post": SDP}),
        "/whip/{session_id}": ({"PATCH": whip_trickle, "DELETE": whip_delete}, {"Accept-Patch": SDPFRAG}),
        "/whip/{session_id}/prompt": ({"POST": whip_prompt}, {"Accept-Post": "application/json"}),
        "/whep/{token}": ({"POST": whep_play}, {"Accept-Post": SDP}),
        "/whep/{token}/{viewer_id}": ({"PATCH": whep_trickle, "DELETE": whep_delete}, {"Accept-Patch": SDPFRAG}),
    }
    for path, (methods, accepts) in routes.items():
        resource = app.router.add_resource(path)
        for method, handler in methods.items():
            resource.add_route(method, handler)
        resource.add_route("OPTIONS", _preflight(", ".join([*methods, "OPTIONS"]), accepts))
    app.router.add_get("/watch/{token}", watch_page)
    app.router.add_get("/watch/{token}/info", watch_info)
    app.router.add_get("/api/ice-servers", ice_servers)


def _cors_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in CORS_PREFIXES)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: adds the CORS headers to every WHIP/WHEP answer, the error mapping's too."""
    if not _cors_path(request.path):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # only redirects get here; errors became JSON inside
        exc.headers.update(CORS)
        raise
    response.headers.update(CORS)
    return response


def _preflight(methods: str, accepts: dict[str, str]) -> Handler:
    """CORS preflight (and plain OPTIONS): the resource's real methods and what it accepts."""
    headers = {
        hdrs.ALLOW: methods,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
        "Access-Control-Max-Age": "600",
        **accepts,
    }

    async def preflight(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=headers)

    return preflight


def _limit(request: web.Request) -> None:
    request.app[GATE].limiter.hit(client_key(request.remote))


def _watch_failed(request: web.Request) -> None:
    """A dead or unknown watch link or viewer costs like a wrong token (links are secrets)."""
    request.app[GATE].failed(request, "an unknown or ended watch link")


def _ice_links(config: ServerConfig) -> list[str]:
    """RFC 9725 section 4.6: STUN/TURN servers (with credentials) as Link rel="ice-server"."""

    def quoted(value: object) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    links = []
    for server in ice_server_list(config, privileged=True):
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        extra = ""
        if "username" in server:
            extra = f"; username={quoted(server['username'])}; credential={quoted(server.get('credential', ''))}"
            extra += '; credential-type="password"'
        links += [f'<{url}>; rel="ice-server"{extra}' for url in urls]
    return links


async def whip_publish(request: web.Request) -> web.Response:
    request.app[GATE].admit(request, offer=True)
    if (placed := await place(request)) is not None:
        return placed  # a media process of this server took it
    sdp = await read_sdp(request)
    prompt = request.query.get("prompt", request.app[CONFIG].default_prompt).strip()
    registry = request.app[REGISTRY]
    session, answer = await registry.create(sdp, "offer", prompt, kind="whip")
    link = registry.create_watch(session)
    links = [f'<{link.path}>; rel="alternate"; type="text/html"', f'</whep/{link.token}>; rel="whep"']
    headers = {
        hdrs.LOCATION: f"/whip/{session.id}",
        hdrs.LINK: ", ".join(links + _ice_links(request.app[CONFIG])),
        hdrs.ETAG: registry.etag(session.pc),
        "Accept-Patch": SDPFRAG,
    }
    return web.Response(status=201, body=answer.sdp.encode(), content_type=SDP, headers=headers)


def _whip_session(request: web.Request) -> Session:
    request.app[GATE].admit(request, offer=False)
    session = request.app[REGISTRY].get(request.match_info["session_id"])
    if session is None or session.kind != "whip":
        raise web.HTTPNotFound(text="no such WHIP session (it ended or never existed)")
    return session


async def _trickle(request: web.Request, owner: Session | Viewer) -> web.Response:
    require_type(request, SDPFRAG)
    if (await request.read()).strip():  # an empty fragment carries nothing to apply
        fragment = await read_text(request, "an SDP fragment")
        added = await request.app[REGISTRY].trickle(owner.pc, fragment, request.headers.get("If-Match"))
        if isinstance(owner, Session):
            owner.log.debug("trickled %d remote candidates", added)
        else:
            log.debug("viewer %s: trickled %d remote candidates", owner.id, added)
    return web.Response(status=204)


async def whip_trickle(request: web.Request) -> web.Response:
    return await _trickle(request, _whip_session(request))


async def whip_delete(request: web.Request) -> web.Response:
    if request.app[REGISTRY].recently_ended("whip", request.match_info["session_id"]):
        request.app[GATE].admit(request, offer=False)
        return web.Response(status=200)  # ended already (the client closed its side first)
    session = _whip_session(request)
    await session.aclose("WHIP DELETE")
    return web.Response(status=200)


async def whip_prompt(request: web.Request) -> web.Response:
    session = _whip_session(request)
    data = await read_json(request, 'a JSON object {"prompt": "..."}')
    prompt = data.get("prompt") if isinstance(data, dict) else None
    if not isinstance(prompt, str):
        raise BadRequest("bad_request", 'body must be {"prompt": "..."}')
    limit_chars = request.app[ENGINE].info.max_prompt_chars
    if len(prompt.strip()) > limit_chars:
        raise BadRequest("prompt_too_long", f"prompt has {len(prompt.strip())} characters; at most {limit_chars}")
    seq = session.set_prompt(prompt.strip())
    return web.json_response({"seq": seq, "status": "queued"}, status=202)


async def watch_page(request: web.Request) -> web.FileResponse:
    try:
        request.app[REGISTRY].resolve_watch(request.match_info["token"])
        status = 200
    except WatchNotFound:
        _watch_failed(request)
        status = 404  # the page still loads and explains that the link has ended
    return web.FileResponse(STATIC_DIR / "watch.html", status=status, headers={"Cache-Control": "no-store"})


async def watch_info(request: web.Request) -> web.Response:
    """What the viewer page shows beside the video: the style on now and how many watch.
    An ended link is a JSON 404 (and costs like a wrong token, as the page does)."""
    try:
        session = request.app[REGISTRY].resolve_watch(request.match_info["token"])
    except WatchNotFound:
        _watch_failed(request)
        raise
    body = {"prompt": session.prompt, "viewers": len(session.viewers)}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def whep_play(request: web.Request) -> web.Response:
    _limit(request)
    sdp = await read_sdp(request)
    token = request.match_info["token"]
    registry = request.app[REGISTRY]
    _session, viewer, answer = await registry.add_viewer(token, sdp)
    headers = {
        hdrs.LOCATION: f"/whep/{token}/{viewer.id}",
        hdrs.ETAG: registry.etag(viewer.pc),
        "Accept-Patch": SDPFRAG,
    }
    links = _ice_links(request.app[CONFIG])
    if links:
        headers[hdrs.LINK] = ", ".join(links)
    return web.Response(status=201, body=answer.encode(), content_type=SDP, headers=headers)


def _viewer(request: web.Request) -> Viewer:
    try:
        return request.app[REGISTRY].viewer(request.match_info["token"], request.match_info["viewer_id"])
    except WatchNotFound:
        _watch_failed(request)
        raise


async def whep_trickle(request: web.Request) -> web.Response:
    return await _trickle(request, _viewer(request))


async def whep_delete(request: web.Request) -> web.Response:
    if request.app[REGISTRY].recently_ended("whep", request.match_info["token"], request.match_info["viewer_id"]):
        return web.Response(status=200)  # ended already (the player closed its side first)
    await _viewer(request).aclose()
    return web.Response(status=200)


def ice_server_list(config: ServerConfig, *, privileged: bool) -> list[dict[str, object]]:
    """What a page's RTCPeerConnection gets. Credentials (static TURN users, and short-lived
    ones from the TURN secret, fetched fresh for every connection) only for a privileged
    caller; anyone else gets the servers that need none (STUN)."""
    servers = [s.to_json() for s in config.ice_servers if privileged or (s.username is None and s.credential is None)]
    if privileged and config.turn is not None:
        servers.append(turn_ice_server(config.turn, "livestyle", time.time()))
    return servers


def may_relay(request: web.Request) -> bool:
    """With access tokens on, TURN credentials are for a broadcaster (an access token) or a
    viewer (a live watch link's token), either as `Authorization: Bearer`. A credential that
    is neither counts as a failed attempt (401)."""
    gate = request.app[GATE]
    if not gate.policy.enabled:
        return True
    credential = bearer(request)
    if credential is None:
        return False
    gate.limiter.check(client_key(request.remote))
    if gate.policy.allows(credential):
        return True
    try:
        request.app[REGISTRY].resolve_watch(credential)
        return True
    except WatchNotFound:
        gate.failed(request, "a wrong access token or watch link")
        raise Unauthorized() from None


async def ice_servers(request: web.Request) -> web.Response:
    servers = ice_server_list(request.app[CONFIG], privileged=may_relay(request))
    return web.json_response({"ice_servers": servers}, headers={"Cache-Control": "no-store"})
