"""Typed application state (aiohttp AppKeys), shared by the route modules."""

from __future__ import annotations

from aiohttp import ClientSession, web
from prometheus_client import CollectorRegistry

from pipeline.client import EngineClient, EngineSpec
from server.access import AccessGate
from server.config import ServerConfig
from server.drain import Drainer
from signaling.registry import SessionRegistry

CONFIG = web.AppKey("config", ServerConfig)
ENGINE_SPEC = web.AppKey("engine_spec", EngineSpec)
ENGINE = web.AppKey("engine", EngineClient)
REGISTRY = web.AppKey("registry", SessionRegistry)
METRICS = web.AppKey("metrics", CollectorRegistry)
GATE = web.AppKey("access_gate", AccessGate)
"""Access tokens and the per-address rate limit (offers and failed attempts)."""
MAX_BODY = web.AppKey("max_body_bytes", int)
PEER_HTTP = web.AppKey("peer_http", ClientSession)
"""The client session that forwards requests to peer pods (only with forwarding on)."""
DRAINER = web.AppKey("drainer", Drainer)
