"""Typed application state (aiohttp AppKeys), shared by the route modules."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from pipeline.client import EngineClient, EngineSpec
from server.access import AccessPolicy, RateLimiter
from server.config import ServerConfig
from signaling.registry import SessionRegistry

CONFIG = web.AppKey("config", ServerConfig)
ENGINE_SPEC = web.AppKey("engine_spec", EngineSpec)
ENGINE = web.AppKey("engine", EngineClient)
REGISTRY = web.AppKey("registry", SessionRegistry)
METRICS = web.AppKey("metrics", CollectorRegistry)
ACCESS = web.AppKey("access", AccessPolicy)
LIMITER = web.AppKey("offer_limiter", RateLimiter)
MAX_BODY = web.AppKey("max_body_bytes", int)
