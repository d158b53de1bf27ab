"""aiohttp application factory: typed app state, one cleanup context that owns the
engine and the session registry, routes and the error middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.client import EngineClient, EngineSpec
from pipeline.engines import resolve_engine
from server.access import AccessPolicy, RateLimiter
from server.config import ServerConfig
from server.errors import BadRequest, error_middleware
from server.keys import ACCESS, CONFIG, ENGINE, ENGINE_SPEC, LIMITER, MAX_BODY, METRICS, REGISTRY
from server.metrics import build_registry
from server.sharing import add_routes as add_sharing_routes
from server.sharing import ice_server_list
from signaling.protocol import PROTOCOL_VERSION
from signaling.registry import SessionRegistry
from signaling.session import SessionSettings, engine_json

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(config: ServerConfig, engine_spec: EngineSpec | None = None) -> web.Application:
    """engine_spec: what engine to run; by default resolved from config.engine (tests
    pass fakes here)."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[error_middleware])
    app[CONFIG] = config
    app[MAX_BODY] = config.max_body_bytes
    app[ENGINE_SPEC] = engine_spec if engine_spec is not None else resolve_engine(config.engine)
    app[ACCESS] = AccessPolicy(config.auth_tokens)
    app[LIMITER] = RateLimiter(config.offer_rate_per_min, config.offer_burst)
    app.cleanup_ctx.append(_engine_and_sessions)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/config", client_config)
    add_sharing_routes(app)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    return app


async def _engine_and_sessions(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    engine = EngineClient(app[ENGINE_SPEC])
    engine.start()
    registry = SessionRegistry(
        engine,
        max_sessions=config.max_sessions,
        settings=SessionSettings(idle_timeout_s=config.idle_timeout_s, max_short_side=config.engine.size),
        ice_servers=config.ice_servers,
        max_viewers=config.max_viewers,
        watch_ttl_s=config.watch_ttl_s,
    )
    app[ENGINE] = engine
    app[REGISTRY] = registry
    app[METRICS] = build_registry(engine, registry)
    yield
    # Order matters: peers first (they feed the engine), then the engine thread.
    await registry.aclose()
    await engine.aclose()


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.FileResponse:
    # Browsers ask for /favicon.ico when a page names no icon (and some clients always do).
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Cache-Control": "max-age=86400"})


async def offer(request: web.Request) -> web.Response:
    request.app[ACCESS].require(request)
    request.app[LIMITER].hit(request.remote or "unknown")
    body = await request.read()  # aiohttp enforces client_max_size -> 413
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("bad_json", f"body is not valid JSON: {exc}") from None
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
        }
    )


async def healthz(request: web.Request) -> web.Response:
    engine, registry = request.app[ENGINE], request.app[REGISTRY]
    status = {"ready": "ok", "starting": "warming_up", "warming_up": "warming_up"}.get(engine.state, "unhealthy")
    body = {
        "status": status,
        "engine": {**engine_json(engine.info, engine.state), "error": engine.failure or None},
        "sessions": len(registry),
        "capacity": registry.max_sessions,
    }
    return web.json_response(body, status=503 if status == "unhealthy" else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS]), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def client_config(request: web.Request) -> web.Response:
    config, engine = request.app[CONFIG], request.app[ENGINE]
    return web.json_response(
        {
            "ice_servers": ice_server_list(config),
            "engine": engine_json(engine.info, engine.state),
            "max_prompt_chars": engine.info.max_prompt_chars,
            "default_prompt": config.default_prompt,
            "protocol_version": PROTOCOL_VERSION,
            "auth_required": request.app[ACCESS].enabled,
        }
    )
