"""Server configuration, built once from the command line and the environment.

This is the only module that reads argv or os.environ. Every option has an
environment variable LIVESTYLE_<NAME> (command line wins).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import BATCH_BUCKETS, ENGINE_KINDS, ConfigError, EngineConfig
from signaling.ice import IceServer

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = 8080
    """TCP port for HTTP(S)."""
    max_sessions: int = 4
    """Most concurrent WebRTC sessions; more offers get 503 server_full."""
    idle_timeout_s: float = 30.0
    """A session whose camera sent nothing for this long is closed."""
    tls_cert: Path | None = None
    """PEM certificate for HTTPS (browsers need HTTPS for cameras off localhost)."""
    tls_key: Path | None = None
    """PEM private key matching tls_cert."""
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers for the server's and the page's peer connections (none by default:
    enough on a LAN or a host with a public address; add STUN/TURN for NAT)."""
    log_level: str = "info"
    """Logging level: debug, info, warning or error."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted HTTP request body (an SDP offer is a few KiB)."""
    default_prompt: str = "oil painting, vibrant colors"
    """Prompt a new session starts with when the offer names none."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The stylization engine's settings."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not allowed; use 0..65535 (0 = any free port)")
        if not 1 <= self.max_sessions <= 256:
            raise ConfigError(f"max_sessions {self.max_sessions} is not allowed; use 1..256")
        if not self.idle_timeout_s > 0:
            raise ConfigError(f"idle_timeout_s {self.idle_timeout_s} is not allowed; use a positive number")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together: give both or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level {self.log_level!r} is not allowed; use one of {', '.join(LOG_LEVELS)}")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"max_body_bytes {self.max_body_bytes} is not allowed; use 1 KiB..16 MiB")
        if len(self.default_prompt) > self.engine.max_prompt_chars:
            raise ConfigError("default_prompt is longer than max_prompt_chars")


def parse_ice_server(text: str) -> IceServer:
    """'stun:host:port', 'turn:user:pass@host:port' or a JSON object
    {"urls": [...], "username": ..., "credential": ...}."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            urls = data["urls"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"ICE server {text!r} is not valid JSON with 'urls': {exc}") from None
        urls = (urls,) if isinstance(urls, str) else tuple(urls)
        server = IceServer(urls=urls, username=data.get("username"), credential=data.get("credential"))
    else:
        scheme, _, rest = text.partition(":")
        username = credential = None
        if "@" in rest:
            creds, _, rest = rest.rpartition("@")
            username, _, credential = creds.partition(":")
        server = IceServer(urls=(f"{scheme}:{rest}",), username=username, credential=credential)
    for url in server.urls:
        if urlparse(url).scheme not in ("stun", "stuns", "turn", "turns"):
            raise ConfigError(f"ICE server URL {url!r} must start with stun:, stuns:, turn: or turns:")
    return server


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livestyle serve", description="Run the WebRTC stylization server.")
    p.add_argument("--host", help="address to listen on (LIVESTYLE_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (LIVESTYLE_PORT, default 8080)")
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (LIVESTYLE_MAX_SESSIONS, default 4)")
    p.add_argument("--idle-timeout", type=float, help="seconds without video before a session closes")
    p.add_argument("--engine", choices=ENGINE_KINDS, help="auto | diffusion | preview (LIVESTYLE_ENGINE)")
    p.add_argument("--model", help="HF id, local dir or 'tiny' (LIVESTYLE_MODEL)")
    p.add_argument("--max-batch", type=int, help=f"frames per engine step: {BATCH_BUCKETS}")
    p.add_argument("--device", help="torch device for the diffusion engine (auto, cuda, cuda:N, cpu)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (LIVESTYLE_TLS_CERT)")
    p.add_argument("--tls-key", type=Path, help="PEM key (LIVESTYLE_TLS_KEY)")
    p.add_argument(
        "--ice-server",
        action="append",
        dest="ice_servers",
        help="STUN/TURN server, repeatable: stun:host:port or turn:user:pass@host:port "
        "(LIVESTYLE_ICE_SERVERS: comma-separated)",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help="LIVESTYLE_LOG_LEVEL, default info")
    return p


_ENV_FIELDS: dict[str, tuple[str, type]] = {
    "host": ("LIVESTYLE_HOST", str),
    "port": ("LIVESTYLE_PORT", int),
    "max_sessions": ("LIVESTYLE_MAX_SESSIONS", int),
    "idle_timeout": ("LIVESTYLE_IDLE_TIMEOUT", float),
    "engine": ("LIVESTYLE_ENGINE", str),
    "model": ("LIVESTYLE_MODEL", str),
    "max_batch": ("LIVESTYLE_MAX_BATCH", int),
    "device": ("LIVESTYLE_DEVICE", str),
    "tls_cert": ("LIVESTYLE_TLS_CERT", Path),
    "tls_key": ("LIVESTYLE_TLS_KEY", Path),
    "log_level": ("LIVESTYLE_LOG_LEVEL", str),
}


def load_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """CLI > environment > defaults. Raises ConfigError (argparse exits on bad syntax)."""
    env = os.environ if environ is None else environ
    args = _build_parser().parse_args(list(argv))
    values: dict[str, object] = {}
    for name, (var, cast) in _ENV_FIELDS.items():
        value = getattr(args, name)
        if value is None and env.get(var):
            try:
                value = cast(env[var])
            except ValueError:
                raise ConfigError(f"{var}={env[var]!r} is not a valid {cast.__name__}") from None
        if value is not None:
            values[name] = value

    ice_texts = args.ice_servers
    if ice_texts is None and env.get("LIVESTYLE_ICE_SERVERS"):
        ice_texts = [t for t in env["LIVESTYLE_ICE_SERVERS"].split(",") if t.strip()]
    engine_fields: dict[str, object] = {}
    for cli_name, field_name in (
        ("engine", "kind"),
        ("model", "model"),
        ("max_batch", "max_batch"),
        ("device", "device"),
    ):
        if cli_name in values:
            engine_fields[field_name] = values.pop(cli_name)
    if "idle_timeout" in values:
        values["idle_timeout_s"] = values.pop("idle_timeout")
    if ice_texts is not None:
        values["ice_servers"] = tuple(parse_ice_server(t) for t in ice_texts)
    return ServerConfig(engine=EngineConfig(**engine_fields), **values)  # type: ignore[arg-type]
