"""aiohttp application factory: typed app state, one cleanup context that owns the
engine and the session registry, routes and the error middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.client import EngineClient, EngineSpec
from pipeline.engines import resolve_engine
from pipeline.host import EngineHost
from pipeline.remote import RemoteLink, remote_spec
from server.access import AccessGate, AccessPolicy, RateLimiter
from server.bodies import body_middleware, read_json
from server.cluster import add_routes as add_cluster_routes
from server.cluster import forward_middleware, peer_client_middleware, peer_http, place
from server.config import ServerConfig
from server.drain import Drainer
from server.errors import BadRequest, Handler, HttpServerLog, error_middleware
from server.keys import CONFIG, DRAINER, ENGINE, ENGINE_SPEC, GATE, MAX_BODY, METRICS, REGISTRY
from server.metrics import build_registry
from server.sharing import add_routes as add_sharing_routes
from server.sharing import cors_middleware, ice_server_list
from signaling.control import ControlLimits
from signaling.encoders import install_realtime_encoders
from signaling.jitter import install_marker_release
from signaling.protocol import PROTOCOL_VERSION
from signaling.registry import SessionRegistry
from signaling.session import SessionSettings, engine_json

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
LINGER_S = 2.0


def create_app(config: ServerConfig, engine_spec: EngineSpec | None = None) -> web.Application:
    """engine_spec: what engine to run; by default resolved from config.engine (tests
    pass fakes here)."""
    # Outermost first: CORS sees every answer, the error mapping sees the body reader's errors.
    # The forwarder last: it sees the body read and its errors mapped like any route's.
    middlewares = [cors_middleware, error_middleware, peer_client_middleware, body_middleware, forward_middleware]
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app[CONFIG] = config
    app[MAX_BODY] = config.max_body_bytes
    if engine_spec is None:
        engine_spec = engine_spec_of(config)
    app[ENGINE_SPEC] = engine_spec
    app[GATE] = AccessGate(AccessPolicy(config.auth_tokens), RateLimiter(config.offer_rate_per_min, config.offer_burst))
    app.cleanup_ctx.append(_engine_and_sessions)
    if config.cluster.forwarding:
        app.cleanup_ctx.append(peer_http)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/config", client_config)
    add_sharing_routes(app)
    add_cluster_routes(app)
    app.router.add_get("/static/{name:.+}", _static_files())
    app.router.add_post("/session/{session_id}/close", close_session)
    return app


def engine_spec_of(config: ServerConfig) -> EngineSpec:
    """The engine this server builds, or, with --engine-socket, what stands for another
    process's engine until it answers."""
    if config.engine_socket:
        return remote_spec(config.engine_socket, config.engine.size, config.engine.max_prompt_chars)
    return resolve_engine(config.engine)


def server_options(config: ServerConfig) -> dict[str, Any]:
    """Connection-level settings for the app's runner (web.run_app or a test server):
    - keepalive_timeout: aiohttp closes a connection that has not delivered a complete
      request head this long after it opened or after the previous response, so it bounds
      headers that trickle in (slowloris) as well as idle keep-alive connections;
    - lingering_time: after an early answer (413, 408), how long unread body bytes are
      drained so the client can read the answer before the connection closes;
    - auto_decompress off: a compressed body could expand far beyond client_max_size;
    - logger: malformed HTTP that aiohttp's parser refuses is a debug line, not a traceback."""
    return {
        "keepalive_timeout": config.header_timeout_s,
        "lingering_time": min(LINGER_S, config.body_timeout_s),
        "auto_decompress": False,
        "logger": HttpServerLog(),
    }


async def _engine_and_sessions(app: web.Application) -> AsyncIterator[None]:
    install_marker_release()  # video frames leave aiortc's jitter buffer on their marker packet
    install_realtime_encoders()  # cheaper encoder settings for the stylized stream
    config = app[CONFIG]
    link = RemoteLink.factory(config.engine_socket) if config.engine_socket else None
    engine = EngineClient(app[ENGINE_SPEC], runtime=config.runtime, link=link)
    engine.start()
    host = EngineHost(engine, config.engine_host) if config.engine_host else None
    if host is not None:
        await host.start()
    registry = SessionRegistry(
        engine,
        max_sessions=config.max_sessions,
        settings=SessionSettings(
            idle_timeout_s=config.idle_timeout_s,
            max_short_side=config.engine.size,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            control=ControlLimits(rate_per_s=config.control_rate, burst=config.control_burst),
        ),
        ice_servers=config.ice_servers,
        max_viewers=config.max_viewers,
        watch_ttl_s=config.watch_ttl_s,
        id_prefix=f"{config.cluster.pod_name}." if config.cluster.pod_name else "",
    )
    app[ENGINE] = engine
    app[REGISTRY] = registry
    app[DRAINER] = drainer = Drainer(registry, config.cluster.drain_grace_s)
    app[METRICS] = build_registry(engine, registry)
    yield
    # Order matters: peers first (they feed the engine), then other processes' sessions,
    # then the engine thread.
    await drainer.aclose()
    await registry.aclose()
    if host is not None:
        await host.aclose()
    await engine.aclose()


def _static_files() -> Handler:
    """The page's files, looked up in a table made at start: nothing outside static/ can be
    named, and a miss is a JSON 404 like every other error (aiohttp's static route answers
    some unreadable names with a bare 404 of its own)."""
    files = {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()}

    async def static_file(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(text="no such file")
        return web.FileResponse(path)

    return static_file


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.FileResponse:
    # Browsers ask for /favicon.ico when a page names no icon (and some clients always do).
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Cache-Control": "max-age=86400"})


async def offer(request: web.Request) -> web.Response:
    request.app[GATE].admit(request, offer=True)
    if (placed := await place(request)) is not None:
        return placed  # a media process of this server took it
    data = await read_json(request, "a JSON object {sdp, type, prompt?}")
    if not isinstance(data, dict):
        raise BadRequest("bad_request", "body must be a JSON object {sdp, type, prompt?}")
    sdp, sdp_type = data.get("sdp"), data.get("type")
    prompt = data.get("prompt", request.app[CONFIG].default_prompt)
    if not isinstance(sdp, str) or not isinstance(sdp_type, str):
        raise BadRequest("bad_request", "'sdp' and 'type' must be strings")
    if not isinstance(prompt, str):
        raise BadRequest("bad_request", "'prompt' must be a string")
    engine = request.app[ENGINE]
    session, answer = await request.app[REGISTRY].create(sdp, sdp_type, prompt.strip())
    return web.json_response(
        {
            "sdp": answer.sdp,
            "type": answer.type,
            "session_id": session.id,
            "engine": engine_json(engine.info, engine.state),
            # The page POSTs the secret here when it goes away (sendBeacon on pagehide).
            "close_url": f"/session/{session.id}/close",
            "close_secret": session.close_secret,
        }
    )


async def close_session(request: web.Request) -> web.Response:
    """End a page's session at once (pagehide). The body is the session's close secret from
    the /offer answer; a wrong secret and an unknown session get the same 404."""
    body = await request.read()
    secret = body.decode("utf-8", errors="replace").strip()
    session = request.app[REGISTRY].closable(request.match_info["session_id"], secret)
    if session is None:
        raise web.HTTPNotFound(text="no such session")
    await session.aclose("closed by the page")
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    """status (ok, warming_up, degraded, restarting, unhealthy), reason, progress (warm-up
    detail), restart and transient-fault counts; 503 only when unhealthy."""
    engine, registry = request.app[ENGINE], request.app[REGISTRY]
    health = engine.health.snapshot()
    body = {
        **health,
        "engine": {**engine_json(engine.info, engine.state), "error": engine.failure or None},
        "sessions": len(registry),
        "capacity": registry.max_sessions,
    }
    return web.json_response(body, status=503 if health["status"] == "unhealthy" else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS]), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def client_config(request: web.Request) -> web.Response:
    config, engine = request.app[CONFIG], request.app[ENGINE]
    return web.json_response(
        {
            "ice_servers": ice_server_list(config, privileged=not request.app[GATE].policy.enabled),
            "engine": engine_json(engine.info, engine.state),
            "max_prompt_chars": engine.info.max_prompt_chars,
            "default_prompt": config.default_prompt,
            "protocol_version": PROTOCOL_VERSION,
            "auth_required": request.app[GATE].policy.enabled,
        }
    )
