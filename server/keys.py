"""Typed application state (aiohttp AppKeys), shared by the route modules."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from pipeline.client import EngineClient, EngineSpec
from server.access import AccessGate
from server.config import ServerConfig
from signaling.registry import SessionRegistry

CONFIG = web.AppKey("config", ServerConfig)
ENGINE_SPEC = web.AppKey("engine_spec", EngineSpec)
ENGINE = web.AppKey("engine", EngineClient)
REGISTRY = web.AppKey("registry", SessionRegistry)
METRICS = web.AppKey("metrics", CollectorRegistry)
GATE = web.AppKey("access_gate", AccessGate)
"""Access tokens and the per-address rate limit (offers and failed attempts)."""
MAX_BODY = web.AppKey("max_body_bytes", int)
