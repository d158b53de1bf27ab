"""Server configuration, built once from the command line and the environment.

This is the only module that reads argv or os.environ. Every option has an
environment variable LIVESTYLE_<NAME> (command line wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.config import (
    BATCH_BUCKETS,
    CHANNELS_LAST_CHOICES,
    COMPILE_MODES,
    ENGINE_KINDS,
    FP8_CHOICES,
    INDUCTOR_CHOICES,
    TEXT_MODES,
    ConfigError,
    DiffusionConfig,
    EngineConfig,
)
from pipeline.runtime import SCHEDULES, RuntimeConfig
from pipeline.video_file import OUTPUT_FORMATS
from server.access import read_tokens_file
from server.turn import TurnConfig
from signaling.ice import IceServer

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_SOCKET_PATH = 107
"""Longest Unix socket path Linux takes (sun_path holds 108 bytes with the NUL)."""
POD_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""A pod name as a StatefulSet makes them (a DNS label): it becomes part of ids and host names."""


@dataclass(frozen=True)
class ClusterConfig:
    """Running as one pod of a fleet (Kubernetes StatefulSet). All off by default: a single
    server ignores every field but the drain ones."""

    pod_name: str | None = None
    """This server's pod name; it prefixes session ids and watch tokens so links name their owner."""
    peer_url_template: str | None = None
    """Base URL of a peer pod, with {pod} for its name (the StatefulSet's headless Service), e.g.
    http://{pod}.livestyle-headless:8080. Requests for another pod's streams are forwarded there."""
    peers: tuple[tuple[str, str], ...] = ()
    """(pod name, base URL) pairs that override the template (a fixed fleet, or a test's stand-in
    for the headless Service's DNS)."""
    peer_secret: str | None = field(default=None, repr=False)
    """Shared by the pods: a forwarded request carrying it may name the original client's
    address (for the rate limits); without it, forwarded requests count as the forwarding pod's."""
    forward_timeout_s: float = 5.0
    """Longest a forwarded request may take in all (connect, send, answer)."""
    place_on: tuple[str, ...] = ()
    """Names of peers (--peer) that take this server's new sessions: its media processes
    (`--engine-socket`) behind this one public address. A page's offer or a WHIP publish is
    forwarded to the one with the most free slots (by its /readyz); this server takes no
    session itself. Empty = this server takes its own."""
    drain_grace_s: float = 30.0
    """After a drain starts, how long live sessions keep running before they are told to move."""
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token for POST /admin/drain; none = the admin endpoint is off."""

    def __post_init__(self) -> None:
        names = [self.pod_name] if self.pod_name is not None else []
        for name in [*names, *(pod for pod, _ in self.peers)]:
            if not POD_NAME.fullmatch(name):
                raise ConfigError(
                    f"pod name {name[:70]!r} is not allowed; use a DNS label: a-z, 0-9 and '-', at most 63 "
                    "(--pod-name, LIVESTYLE_POD_NAME; --peer NAME=URL)"
                )
        if self.peer_url_template is not None and "{pod}" not in self.peer_url_template:
            raise ConfigError(
                f"peer URL template {self.peer_url_template[:80]!r} has no {{pod}}; e.g. "
                "http://{pod}.livestyle-headless:8080 (--peer-url-template)"
            )
        for url in [self.peer_url_template or "", *(u for _, u in self.peers)]:
            if url and urlparse(url.replace("{pod}", "pod")).scheme not in ("http", "https"):
                raise ConfigError(
                    f"peer URL {url[:80]!r} is not allowed; use http:// or https:// (--peer, --peer-url-template)"
                )
        if (self.peer_url_template or self.peers) and self.pod_name is None:
            raise ConfigError("forwarding to peers needs this server's own --pod-name (LIVESTYLE_POD_NAME)")
        unknown = [name for name in self.place_on if name not in dict(self.peers)]
        if unknown:
            raise ConfigError(
                f"--place-on names {', '.join(unknown)[:120]}, which are not peers; name each with "
                "--peer NAME=URL (LIVESTYLE_PEERS) first"
            )
        if not 0.5 <= self.forward_timeout_s <= 60:
            raise ConfigError(
                f"forward timeout {self.forward_timeout_s} s is not allowed; use 0.5..60 (--forward-timeout)"
            )
        if not 0 <= self.drain_grace_s <= 24 * 3600:
            raise ConfigError(f"drain grace {self.drain_grace_s} s is not allowed; use 0..86400 (--drain-grace)")
        for secret, flag in ((self.admin_token, "--admin-token"), (self.peer_secret, "--peer-secret")):
            if secret is not None and len(secret) < 16:
                raise ConfigError(f"{flag} must have at least 16 characters (use a random string)")

    @property
    def forwarding(self) -> bool:
        return self.pod_name is not None and bool(self.peer_url_template or self.peers)

    def peer_url(self, pod: str) -> str | None:
        """Where pod `pod` answers, or None when it cannot be one of this fleet's pods: a named
        peer, or (with the template) a sibling of this pod in the same StatefulSet
        (NAME-<ordinal>), so a forged link cannot send requests to arbitrary host names."""
        named = dict(self.peers)
        if pod in named:
            return named[pod].rstrip("/")
        if self.peer_url_template is None or self.pod_name is None:
            return None
        stem = self.pod_name.rpartition("-")[0]
        if not (stem and re.fullmatch(re.escape(stem) + r"-[0-9]{1,5}", pod)):
            return None
        return self.peer_url_template.replace("{pod}", pod).rstrip("/")


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
    ice_loopback: bool = False
    """Offer 127.0.0.1 as an ICE host candidate too (aiortc leaves it out): only for peers on
    this same machine, e.g. a benchmark on a host whose only address is loopback."""
    log_level: str = "info"
    """Logging level: debug, info, warning or error."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted HTTP request body (an SDP offer is a few KiB)."""
    default_prompt: str = "oil painting, vibrant colors"
    """Prompt a new session starts with when the offer names none."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The stylization engine's settings."""
    tls_self_signed: bool = False
    """Generate (or reuse) a self-signed certificate at start, so phones on the LAN can use
    their camera over HTTPS (they must accept the certificate warning once)."""
    tls_dir: Path = Path("~/.cache/livestyle/tls")
    """Where the self-signed certificate is kept between starts."""
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    """Bearer tokens that may start sessions (/offer, /whip); none = open server. Never logged."""
    offer_rate_per_min: float = 30.0
    """Offers (/offer, /whip, /whep) a client address may make per minute (0 = unlimited)."""
    offer_burst: int = 10
    """Offers a client address may make at once before the rate applies."""
    max_viewers: int = 10
    """Viewers per shared stream."""
    watch_ttl_s: float = 12 * 3600
    """Lifetime of a watch link (it also ends when the broadcaster leaves or revokes it)."""
    turn: TurnConfig | None = None
    """TURN server with a shared secret: pages get short-lived credentials for it."""
    # ---- engine runtime (engine-faults) ----
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Step scheduling, the per-step text budget, the step watchdog and engine restarts."""
    # ---- HTTP edge limits (http-edge) ----
    header_timeout_s: float = 10.0
    """Seconds a connection may take to send a complete request head (request line and
    headers), counted from its opening or from the previous response; it is also how long
    an idle keep-alive connection stays open. Half-sent requests are closed after it."""
    body_timeout_s: float = 10.0
    """Seconds a request body may take to arrive in full; a slower or shorter-than-announced
    body gets 408 and the connection is closed."""
    # -- session liveness and the control channel
    heartbeat_timeout_s: float = 6.0
    """A connected session with neither video nor control messages for this long is closed
    (the page pings every second; a WHIP publisher sends video only)."""
    connect_timeout_s: float = 8.0
    """A page, WHIP publisher or WHEP viewer not connected this long after its answer is dropped."""
    control_rate: float = 20.0
    """Control-channel messages a session may send per second; more get `rate_limited` and are dropped."""
    control_burst: int = 40
    """Control-channel messages a session may send at once before control_rate applies."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Pod identity, forwarding to peer pods and draining (fleet use; off by default)."""
    # ---- engine shared between processes (pipeline.host, pipeline.remote) ----
    engine_host: str | None = None
    """Unix socket path on which this server also lends its engine to media processes
    (other servers started with engine_socket = this path); none = only its own sessions."""
    engine_socket: str | None = None
    """Unix socket path of another server's engine (its engine_host): this process builds
    no engine and runs only the WebRTC sessions, with its own GIL and event loop."""

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
        if self.tls_self_signed and self.tls_cert is not None:
            raise ConfigError("use either tls_cert/tls_key or tls_self_signed, not both")
        if any(len(t) < 16 for t in self.auth_tokens):
            raise ConfigError("auth tokens must have at least 16 characters (use a random string)")
        if not 0 <= self.offer_rate_per_min <= 100_000 or not 1 <= self.offer_burst <= 10_000:
            raise ConfigError(
                f"offer rate {self.offer_rate_per_min}/min with burst {self.offer_burst} is not allowed; "
                "use 0..100000 per minute and a burst of 1..10000"
            )
        if not 0 <= self.max_viewers <= 1000:
            raise ConfigError(f"max_viewers {self.max_viewers} is not allowed; use 0..1000")
        if not 60 <= self.watch_ttl_s <= 30 * 86400:
            raise ConfigError(f"watch_ttl_s {self.watch_ttl_s} is not allowed; use 60 s .. 30 days")
        for name, flag in (("header_timeout_s", "--header-timeout"), ("body_timeout_s", "--body-timeout")):
            value = getattr(self, name)
            if not 0.5 <= value <= 600:
                raise ConfigError(f"{name} {value} is not allowed; use 0.5..600 seconds ({flag})")
        if not 2 <= self.heartbeat_timeout_s <= 3600:
            raise ConfigError(
                f"heartbeat timeout {self.heartbeat_timeout_s} s is not allowed; use 2..3600 (--heartbeat-timeout)"
            )
        if not 1 <= self.connect_timeout_s <= 600:
            raise ConfigError(
                f"connect timeout {self.connect_timeout_s} s is not allowed; use 1..600 (--connect-timeout)"
            )
        if self.engine_host and self.engine_socket:
            raise ConfigError(
                f"--engine-host {self.engine_host} and --engine-socket {self.engine_socket} exclude each other: a "
                "process either runs the engine (and may lend it) or uses another's"
            )
        for name, flag in (("engine_host", "--engine-host"), ("engine_socket", "--engine-socket")):
            path = getattr(self, name)
            if path is not None and not 0 < len(os.fsencode(path)) <= MAX_SOCKET_PATH:
                raise ConfigError(
                    f"{flag} {path!r} is not a usable Unix socket path; use 1..{MAX_SOCKET_PATH} bytes "
                    "(a short absolute path such as /tmp/livestyle-engine.sock)"
                )
        if not 1 <= self.control_rate <= 10_000 or not 1 <= self.control_burst <= 100_000:
            raise ConfigError(
                f"control rate {self.control_rate}/s with burst {self.control_burst} is not allowed; use "
                "1..10000 per second and a burst of 1..100000 (--control-rate, --control-burst)"
            )


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


def _flag(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a yes/no value; use 1 or 0")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of integers") from None


def _defaults(cls: type) -> dict[str, object]:
    """A config dataclass's field defaults, for help texts (never hand-copied)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _shown(value: object) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _help(text: str, dest: str, *, default: str | None = None) -> str:
    """`text` plus the option's default (from the config dataclass) and environment variable."""
    for table, cls in (
        (_SERVER_FIELDS, ServerConfig),
        (_ENGINE_FIELDS, EngineConfig),
        (_DIFFUSION_FIELDS, DiffusionConfig),
    ):
        if dest in table:
            var, _, field_name = table[dest]
            shown = default if default is not None else _shown(_defaults(cls)[field_name])
            return f"{text} (default: {shown}; env {var})"
    raise KeyError(dest)


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names; 'none' (or nothing) for none."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    return () if names in ((), ("none",)) else names


def _optional_path(text: str) -> str:
    """A directory, or '' for none/off (so the value still counts as given)."""
    return "" if text.strip().lower() in ("", "none", "off") else text.strip()


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Engine options shared by `serve`, `stylize` and `bench`."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINE_KINDS, help=_help("auto | diffusion | preview", "engine"))
    g.add_argument(
        "--model",
        help=_help("Hugging Face id (revision 'diffusers'), a local model folder, 'tiny' or random:DIR", "model"),
    )
    g.add_argument("--max-batch", type=int, help=_help(f"frames per engine step, one of {BATCH_BUCKETS}", "max_batch"))
    g.add_argument("--device", help=_help("torch device of the diffusion engine: auto, cuda, cuda:N, cpu", "device"))
    g.add_argument("--steps", type=int, help=_help("denoising steps per frame, 1..4", "steps"))
    g.add_argument("--text-mode", choices=TEXT_MODES, help=_help("when the text encoder runs", "text_mode"))
    g.add_argument("--text-refresh", type=int, help=_help("steps between text-encoder refreshes", "text_refresh"))
    g.add_argument("--text-image-size", type=int, help=_help("frame side the text encoder sees", "text_image_size"))
    g.add_argument("--text-tokens", type=int, help=_help("fixed text-encoder sequence length", "text_tokens"))
    g.add_argument("--seed", type=int, help=_help("seed of each session's fixed noise", "seed"))
    g.add_argument(
        "--prompt-blend",
        type=int,
        help=_help("frames over which a new prompt blends in, 0..120 (0: switch at once)", "prompt_blend"),
    )
    g.add_argument("--compile", choices=COMPILE_MODES, help=_help("torch.compile mode of the UNet", "compile"))
    g.add_argument(
        "--buckets",
        type=_int_list,
        help=_help("batch sizes compiled at start, e.g. 1,4,8", "buckets", default="all up to --max-batch"),
    )
    g.add_argument("--lllite", help=_help("temporal LLLite adapter checkpoint (.safetensors)", "lllite"))
    g.add_argument("--lllite-blocks", choices=("down_blocks", "all"), help=_help("adapter sites", "lllite_blocks"))
    g.add_argument(
        "--lllite-refresh", type=int, help=_help("steps between adapter conditioning refreshes", "lllite_refresh")
    )
    g.add_argument("--adapter-strength", type=float, help=_help("initial adapter strength, 0..1.5", "adapter_strength"))
    add_speed_switches(g)
    g.add_argument(
        "--compile-cache",
        type=_optional_path,
        help=_help("directory for compiled artifacts, or none", "compile_cache"),
    )


SPEED_SWITCHES = (
    "text_length_step",
    "text_prefix_cache",
    "text_compile",
    "channels_last",
    "fuse_qkv",
    "fp8",
    "inductor",
    "stream_priorities",
)
"""Engine options that change speed, not what a session sees (README, "Speed switches"):
`bench` takes them too, for its in-process engine and every server process it starts."""


def add_speed_switches(g: Any) -> None:
    """The SPEED_SWITCHES flags; 1/0 flags are shown as such."""
    d = DiffusionConfig()
    g.add_argument(
        "--text-length-step",
        type=int,
        help=_help("text-encoder length bucket step in tokens, 0 = fixed length", "text_length_step"),
    )
    g.add_argument(
        "--text-prefix-cache",
        type=_flag,
        help=_help("cache the system prefix's K/V, 1/0", "text_prefix_cache", default=str(int(d.text_prefix_cache))),
    )
    g.add_argument(
        "--text-compile",
        type=_flag,
        help=_help(
            "torch.compile the text encoder's decoder layer, 1/0", "text_compile", default=str(int(d.text_compile))
        ),
    )
    g.add_argument(
        "--channels-last", choices=CHANNELS_LAST_CHOICES, help=_help("channels-last weights", "channels_last")
    )
    g.add_argument(
        "--fuse-qkv",
        type=_flag,
        help=_help("fused UNet attention projections, 1/0", "fuse_qkv", default=str(int(d.fuse_qkv))),
    )
    g.add_argument("--fp8", choices=FP8_CHOICES, help=_help("FP8 linear layers in the UNet", "fp8"))
    g.add_argument(
        "--inductor",
        type=_names,
        help=_help(f"UNet inductor switches, comma-separated or none: {', '.join(INDUCTOR_CHOICES)}", "inductor"),
    )
    g.add_argument(
        "--stream-priorities",
        type=_flag,
        help=_help("UNet stream above side streams, 1/0", "stream_priorities", default=str(int(d.stream_priorities))),
    )


def speed_switches(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The speed switches given on the command line, as (DiffusionConfig field, value)."""
    given = _collect(args, {}, {k: _DIFFUSION_FIELDS[k] for k in SPEED_SWITCHES})
    return tuple(given.items())


def switch_argv(switches: Sequence[tuple[str, Any]]) -> list[str]:
    """The command-line form of speed_switches' result (for a server process)."""
    argv: list[str] = []
    for name, value in switches:
        if isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, tuple):
            text = ",".join(value) or "none"
        else:
            text = str(value)
        argv += [f"--{name.replace('_', '-')}", text]
    return argv


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livestyle serve", description="Run the WebRTC stylization server.")
    p.add_argument("--host", help=_help("address to listen on; 0.0.0.0 = all interfaces", "host"))
    p.add_argument("--port", type=int, help=_help("HTTP(S) port; 0 = any free port", "port"))
    p.add_argument("--max-sessions", type=int, help=_help("concurrent sessions; more get 503", "max_sessions"))
    p.add_argument(
        "--idle-timeout", type=float, help=_help("seconds without video before a session closes", "idle_timeout")
    )
    p.add_argument("--tls-cert", type=Path, help=_help("PEM certificate for HTTPS", "tls_cert"))
    p.add_argument("--tls-key", type=Path, help=_help("PEM key for HTTPS", "tls_key"))
    p.add_argument(
        "--ice-server",
        action="append",
        dest="ice_servers",
        help="STUN/TURN server, repeatable: stun:host:port or turn:user:pass@host:port "
        "(default: none; env LIVESTYLE_ICE_SERVERS, comma-separated)",
    )
    p.add_argument(
        "--ice-loopback",
        action="store_true",
        default=None,
        help=_help("also offer 127.0.0.1 as an ICE candidate (peers on this machine only)", "ice_loopback"),
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, help=_help("logging level", "log_level"))
    g = p.add_argument_group("remote use")
    g.add_argument(
        "--tls-self-signed",
        action="store_true",
        default=None,
        help=_help("HTTPS with a generated self-signed certificate", "tls_self_signed"),
    )
    g.add_argument("--tls-dir", type=Path, help=_help("where the self-signed certificate is kept", "tls_dir"))
    g.add_argument(
        "--auth-token",
        help="bearer token required for /offer and /whip (default: none = open server; env LIVESTYLE_AUTH_TOKEN)",
    )
    g.add_argument(
        "--tokens-file",
        type=Path,
        help="file with one allowed token per line (default: none; env LIVESTYLE_TOKENS_FILE)",
    )
    g.add_argument(
        "--offer-rate", type=float, help=_help("offers per minute per client address, 0 = unlimited", "offer_rate")
    )
    g.add_argument("--max-viewers", type=int, help=_help("viewers per shared stream", "max_viewers"))
    g.add_argument("--watch-ttl", type=float, help=_help("watch link lifetime in seconds", "watch_ttl"))
    g.add_argument(
        "--turn-url",
        action="append",
        help="TURN URL for short-lived credentials, repeatable (default: none; env LIVESTYLE_TURN_URLS)",
    )
    g.add_argument(
        "--turn-secret", help="the TURN server's static-auth-secret (default: none; env LIVESTYLE_TURN_SECRET)"
    )
    g.add_argument(
        "--turn-ttl",
        type=int,
        help=f"seconds a TURN credential stays valid (default: {_defaults(TurnConfig)['ttl_s']})",
    )
    g = p.add_argument_group("HTTP limits")
    g.add_argument(
        "--header-timeout",
        type=float,
        help="seconds a client may take to send a request's headers; also the idle keep-alive time "
        "(LIVESTYLE_HEADER_TIMEOUT, default 10)",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        help="seconds a client may take to send a request body (LIVESTYLE_BODY_TIMEOUT, default 10)",
    )
    g = p.add_argument_group("session liveness and control channel")
    d = ServerConfig
    g.add_argument(
        "--heartbeat-timeout",
        type=float,
        help="seconds without video or control messages before a session closes "
        f"(LIVESTYLE_HEARTBEAT_TIMEOUT, default {d.heartbeat_timeout_s:g})",
    )
    g.add_argument(
        "--connect-timeout",
        type=float,
        help=f"seconds a new peer has to connect after its answer (LIVESTYLE_CONNECT_TIMEOUT, default "
        f"{d.connect_timeout_s:g})",
    )
    g.add_argument(
        "--control-rate",
        type=float,
        help=f"control messages per second per session (LIVESTYLE_CONTROL_RATE, default {d.control_rate:g})",
    )
    g.add_argument(
        "--control-burst",
        type=int,
        help=f"control messages a session may send at once (LIVESTYLE_CONTROL_BURST, default {d.control_burst})",
    )
    g = p.add_argument_group("one engine, several processes (each with its own GIL for WebRTC)")
    g.add_argument(
        "--engine-host",
        help=_help("Unix socket on which to lend this server's engine to media processes", "engine_host"),
    )
    g.add_argument(
        "--engine-socket",
        help=_help("run no engine: use the one another server lends on this Unix socket", "engine_socket"),
    )
    add_engine_arguments(p)
    _add_runtime_arguments(p)
    _add_cluster_arguments(p)
    return p


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    d = ClusterConfig()
    g = p.add_argument_group("fleet (one pod per GPU; see deploy/kubernetes)")
    g.add_argument(
        "--pod-name", help="this pod's name, put into watch links and WHIP URLs (default: none; env LIVESTYLE_POD_NAME)"
    )
    g.add_argument(
        "--peer-url-template",
        help="base URL of a peer pod with {pod} for its name, e.g. http://{pod}.livestyle-headless:8080 "
        "(default: none = no forwarding; env LIVESTYLE_PEER_URL_TEMPLATE)",
    )
    g.add_argument(
        "--peer",
        action="append",
        help="NAME=URL of a peer pod, repeatable; overrides the template (default: none; env LIVESTYLE_PEERS, "
        "comma-separated)",
    )
    g.add_argument(
        "--peer-secret",
        help="secret shared by the pods for forwarded requests (default: none; env LIVESTYLE_PEER_SECRET)",
    )
    g.add_argument(
        "--forward-timeout",
        type=float,
        help=f"seconds a forwarded request may take (default: {d.forward_timeout_s:g}; env LIVESTYLE_FORWARD_TIMEOUT)",
    )
    g.add_argument(
        "--place-on",
        help="comma-separated peer names (from --peer) that take this server's new sessions, e.g. its media "
        "processes behind one public address (default: none = this server takes them; env LIVESTYLE_PLACE_ON)",
    )
    g.add_argument(
        "--drain-grace",
        type=float,
        help="seconds live sessions keep running after a drain starts before they are told to move "
        f"(default: {d.drain_grace_s:g}; env LIVESTYLE_DRAIN_GRACE)",
    )
    g.add_argument(
        "--admin-token",
        help="bearer token for POST /admin/drain (default: none = the endpoint is off; env LIVESTYLE_ADMIN_TOKEN)",
    )


def _peer(text: str) -> tuple[str, str]:
    name, sep, url = text.strip().partition("=")
    if not sep or not name or not url:
        raise ConfigError(f"peer {text[:80]!r} is not NAME=URL, e.g. livestyle-1=http://10.0.0.7:8080 (--peer)")
    return name.strip(), url.strip()


def cluster_config(args: argparse.Namespace, env: Mapping[str, str]) -> ClusterConfig:
    values = _collect(args, env, _CLUSTER_FIELDS)
    peers = args.peer or [p for p in env.get("LIVESTYLE_PEERS", "").split(",") if p.strip()]
    if peers:
        values["peers"] = tuple(_peer(p) for p in peers)
    place = args.place_on if args.place_on is not None else env.get("LIVESTYLE_PLACE_ON", "")
    if place.strip():
        values["place_on"] = tuple(n.strip() for n in place.split(",") if n.strip())
    return ClusterConfig(**values)  # type: ignore[arg-type]


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    d = RuntimeConfig()
    g = p.add_argument_group("engine scheduling and faults")
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help=f"when steps launch: auto | pipelined | serial (LIVESTYLE_SCHEDULE, default {d.schedule})",
    )
    g.add_argument(
        "--text-budget",
        type=int,
        help="sessions per step given a prompt change or their first conditioning "
        f"(LIVESTYLE_TEXT_BUDGET, default {d.text_budget})",
    )
    g.add_argument(
        "--step-timeout",
        type=float,
        help=f"seconds before a running step counts as hung (LIVESTYLE_STEP_TIMEOUT, default {d.step_timeout_s:g})",
    )
    g.add_argument(
        "--engine-restarts",
        type=int,
        help="engine rebuilds after consecutive failures before giving up, 0 = never "
        f"(LIVESTYLE_ENGINE_RESTARTS, default {d.restart_limit})",
    )
    g.add_argument(
        "--restart-backoff",
        type=float,
        help="seconds before the first rebuild, doubled per further failure "
        f"(LIVESTYLE_RESTART_BACKOFF, default {d.restart_backoff_s:g})",
    )


# argparse dest -> (environment variable, type, field of the config dataclass)
_SERVER_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "engine_host": ("LIVESTYLE_ENGINE_HOST", str, "engine_host"),
    "engine_socket": ("LIVESTYLE_ENGINE_SOCKET", str, "engine_socket"),
    "host": ("LIVESTYLE_HOST", str, "host"),
    "port": ("LIVESTYLE_PORT", int, "port"),
    "max_sessions": ("LIVESTYLE_MAX_SESSIONS", int, "max_sessions"),
    "idle_timeout": ("LIVESTYLE_IDLE_TIMEOUT", float, "idle_timeout_s"),
    "tls_cert": ("LIVESTYLE_TLS_CERT", Path, "tls_cert"),
    "tls_key": ("LIVESTYLE_TLS_KEY", Path, "tls_key"),
    "log_level": ("LIVESTYLE_LOG_LEVEL", str, "log_level"),
    "ice_loopback": ("LIVESTYLE_ICE_LOOPBACK", _flag, "ice_loopback"),
    "tls_self_signed": ("LIVESTYLE_TLS_SELF_SIGNED", _flag, "tls_self_signed"),
    "tls_dir": ("LIVESTYLE_TLS_DIR", Path, "tls_dir"),
    "offer_rate": ("LIVESTYLE_OFFER_RATE", float, "offer_rate_per_min"),
    "max_viewers": ("LIVESTYLE_MAX_VIEWERS", int, "max_viewers"),
    "watch_ttl": ("LIVESTYLE_WATCH_TTL", float, "watch_ttl_s"),
    "header_timeout": ("LIVESTYLE_HEADER_TIMEOUT", float, "header_timeout_s"),
    "body_timeout": ("LIVESTYLE_BODY_TIMEOUT", float, "body_timeout_s"),
    "heartbeat_timeout": ("LIVESTYLE_HEARTBEAT_TIMEOUT", float, "heartbeat_timeout_s"),
    "connect_timeout": ("LIVESTYLE_CONNECT_TIMEOUT", float, "connect_timeout_s"),
    "control_rate": ("LIVESTYLE_CONTROL_RATE", float, "control_rate"),
    "control_burst": ("LIVESTYLE_CONTROL_BURST", int, "control_burst"),
}
_ENGINE_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "engine": ("LIVESTYLE_ENGINE", str, "kind"),
    "model": ("LIVESTYLE_MODEL", str, "model"),
    "max_batch": ("LIVESTYLE_MAX_BATCH", int, "max_batch"),
    "device": ("LIVESTYLE_DEVICE", str, "device"),
}
_DIFFUSION_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "steps": ("LIVESTYLE_STEPS", int, "steps"),
    "text_mode": ("LIVESTYLE_TEXT_MODE", str, "text_mode"),
    "text_refresh": ("LIVESTYLE_TEXT_REFRESH", int, "text_refresh"),
    "text_image_size": ("LIVESTYLE_TEXT_IMAGE_SIZE", int, "text_image_size"),
    "text_tokens": ("LIVESTYLE_TEXT_TOKENS", int, "text_tokens"),
    "seed": ("LIVESTYLE_SEED", int, "seed"),
    "prompt_blend": ("LIVESTYLE_PROMPT_BLEND", int, "prompt_blend"),
    "compile": ("LIVESTYLE_COMPILE", str, "compile"),
    "buckets": ("LIVESTYLE_BUCKETS", _int_list, "buckets"),
    "lllite": ("LIVESTYLE_LLLITE", str, "lllite"),
    "lllite_blocks": ("LIVESTYLE_LLLITE_BLOCKS", str, "lllite_blocks"),
    "lllite_refresh": ("LIVESTYLE_LLLITE_REFRESH", int, "lllite_refresh"),
    "adapter_strength": ("LIVESTYLE_ADAPTER_STRENGTH", float, "adapter_strength"),
    # diffusion-perf
    "text_length_step": ("LIVESTYLE_TEXT_LENGTH_STEP", int, "text_length_step"),
    "text_prefix_cache": ("LIVESTYLE_TEXT_PREFIX_CACHE", _flag, "text_prefix_cache"),
    "text_compile": ("LIVESTYLE_TEXT_COMPILE", _flag, "text_compile"),
    "channels_last": ("LIVESTYLE_CHANNELS_LAST", str, "channels_last"),
    "fuse_qkv": ("LIVESTYLE_FUSE_QKV", _flag, "fuse_qkv"),
    "fp8": ("LIVESTYLE_FP8", str, "fp8"),
    "inductor": ("LIVESTYLE_INDUCTOR", _names, "inductor"),
    "stream_priorities": ("LIVESTYLE_STREAM_PRIORITIES", _flag, "stream_priorities"),
    "compile_cache": ("LIVESTYLE_COMPILE_CACHE", _optional_path, "compile_cache_dir"),
}

_CLUSTER_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "pod_name": ("LIVESTYLE_POD_NAME", str, "pod_name"),
    "peer_url_template": ("LIVESTYLE_PEER_URL_TEMPLATE", str, "peer_url_template"),
    "peer_secret": ("LIVESTYLE_PEER_SECRET", str, "peer_secret"),
    "forward_timeout": ("LIVESTYLE_FORWARD_TIMEOUT", float, "forward_timeout_s"),
    "drain_grace": ("LIVESTYLE_DRAIN_GRACE", float, "drain_grace_s"),
    "admin_token": ("LIVESTYLE_ADMIN_TOKEN", str, "admin_token"),
}
_RUNTIME_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "schedule": ("LIVESTYLE_SCHEDULE", str, "schedule"),
    "text_budget": ("LIVESTYLE_TEXT_BUDGET", int, "text_budget"),
    "step_timeout": ("LIVESTYLE_STEP_TIMEOUT", float, "step_timeout_s"),
    "engine_restarts": ("LIVESTYLE_ENGINE_RESTARTS", int, "restart_limit"),
    "restart_backoff": ("LIVESTYLE_RESTART_BACKOFF", float, "restart_backoff_s"),
}


def _collect(
    args: argparse.Namespace, env: Mapping[str, str], table: dict[str, tuple[str, Callable[[str], Any], str]]
) -> dict[str, object]:
    """Values given on the command line, else in the environment (absent ones left out)."""
    values: dict[str, object] = {}
    for dest, (var, cast, field_name) in table.items():
        value = getattr(args, dest, None)
        if value is None and env.get(var):
            try:
                value = cast(env[var])
            except ValueError:
                raise ConfigError(f"{var}={env[var]!r} is not a valid {cast.__name__}") from None
        if value is not None:
            values[field_name] = value
    return values


def engine_config(args: argparse.Namespace, env: Mapping[str, str]) -> EngineConfig:
    diffusion = DiffusionConfig(**_collect(args, env, _DIFFUSION_FIELDS))  # type: ignore[arg-type]
    return EngineConfig(diffusion=diffusion, **_collect(args, env, _ENGINE_FIELDS))  # type: ignore[arg-type]


def load_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """CLI > environment > defaults. Raises ConfigError (argparse exits on bad syntax)."""
    env = os.environ if environ is None else environ
    args = _build_parser().parse_args(list(argv))
    values = _collect(args, env, _SERVER_FIELDS)
    ice_texts = args.ice_servers
    if ice_texts is None and env.get("LIVESTYLE_ICE_SERVERS"):
        ice_texts = [t for t in env["LIVESTYLE_ICE_SERVERS"].split(",") if t.strip()]
    if ice_texts is not None:
        values["ice_servers"] = tuple(parse_ice_server(t) for t in ice_texts)
    tokens: list[str] = []
    token = args.auth_token or env.get("LIVESTYLE_AUTH_TOKEN")
    if token:
        tokens.append(token.strip())
    tokens_file = args.tokens_file or (Path(env["LIVESTYLE_TOKENS_FILE"]) if env.get("LIVESTYLE_TOKENS_FILE") else None)
    if tokens_file is not None:
        tokens += read_tokens_file(tokens_file)
    if tokens:
        values["auth_tokens"] = tuple(tokens)
    turn_urls = args.turn_url or [u for u in env.get("LIVESTYLE_TURN_URLS", "").split(",") if u.strip()]
    turn_secret = args.turn_secret or env.get("LIVESTYLE_TURN_SECRET")
    if turn_urls or turn_secret:
        if not (turn_urls and turn_secret):
            raise ConfigError("TURN needs both --turn-url and --turn-secret (or LIVESTYLE_TURN_URLS/_SECRET)")
        values["turn"] = TurnConfig(
            urls=tuple(u.strip() for u in turn_urls), secret=turn_secret, ttl_s=args.turn_ttl or 3600
        )
    values["runtime"] = RuntimeConfig(**_collect(args, env, _RUNTIME_FIELDS))  # type: ignore[arg-type]
    values["cluster"] = cluster_config(args, env)
    return ServerConfig(engine=engine_config(args, env), **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StylizeConfig:
    """`livestyle stylize IN OUT --prompt P`: run the engine over a video file."""

    input: Path
    """Video file to read."""
    output: Path
    """Video file to write (stylized frames, the input's audio copied when present); .mp4, .mkv or .mov."""
    prompt: str
    """Style prompt for the whole file."""
    engine: EngineConfig
    """Engine settings; frames go through in batches of engine.max_batch consecutive frames."""
    log_level: str = "info"
    """Logging level."""

    def __post_init__(self) -> None:
        if not self.input.is_file():
            what = "is a folder, not a video file" if self.input.is_dir() else "does not exist"
            raise ConfigError(f"input video {self.input} {what}; give the path of a video file (INPUT)")
        suffixes = ", ".join(OUTPUT_FORMATS)
        if self.output.is_dir():
            raise ConfigError(f"output {self.output} is a folder; give a file name ending in one of {suffixes}")
        if self.output.suffix.lower() not in OUTPUT_FORMATS:
            given = f"the extension {self.output.suffix!r}" if self.output.suffix else "no extension"
            raise ConfigError(f"output {self.output} has {given}; name it with one of {suffixes} (OUTPUT)")
        folder = self.output.parent
        if not folder.is_dir():
            raise ConfigError(
                f"the output folder {folder} does not exist; create it first (mkdir -p {folder}) "
                "or choose another OUTPUT"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"the output folder {folder} is not writable by this user; choose another OUTPUT")
        if self.output.resolve() == self.input.resolve():
            raise ConfigError("output must be a different file than the input")
        if not self.prompt:
            raise ConfigError("--prompt is empty; give a style, e.g. --prompt 'oil painting, vibrant colors'")
        if len(self.prompt) > self.engine.max_prompt_chars:
            raise ConfigError(
                f"--prompt has {len(self.prompt)} characters; at most {self.engine.max_prompt_chars} are allowed"
            )


def load_stylize_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> StylizeConfig:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="livestyle stylize", description="Stylize a video file with the engine.")
    p.add_argument("input", type=Path, help="input video (any format FFmpeg reads)")
    p.add_argument("output", type=Path, help=f"output video ({', '.join(OUTPUT_FORMATS)}); written when complete")
    p.add_argument("--prompt", required=True, help="style prompt, e.g. 'oil painting, vibrant colors'")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="logging level (default: info)")
    add_engine_arguments(p)
    args = p.parse_args(list(argv))
    return StylizeConfig(args.input, args.output, args.prompt.strip(), engine_config(args, env), args.log_level)


def load_bench_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Any:
    from bench.harness import ENGINE_SCENARIOS, SCENARIOS, BenchConfig
    from pipeline.engines import INSTALL_STEP, diffusion_stack_missing

    env = os.environ if environ is None else environ
    repo = Path(__file__).resolve().parent.parent
    shared = repo.parent / "shared"
    b = BenchConfig
    p = argparse.ArgumentParser(
        prog="livestyle bench",
        description="Benchmark the engine and the server; writes a results file (docs/performance.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=env.get("LIVESTYLE_MODEL") or f"random:{shared / 'reference'}",
        help="random:DIR (full-size random weights from reference configs), tiny, HF id or dir",
    )
    p.add_argument("--davis-dir", type=Path, default=shared / "data" / "davis", help="folder of DAVIS .mp4 clips")
    p.add_argument("--out-dir", type=Path, default=repo / "bench" / "results", help="where the results file goes")
    p.add_argument("--scenarios", default=",".join(ENGINE_SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--frames", type=int, default=b.frames, help="frames per offline clip measurement")
    p.add_argument("--batches", type=_int_list, default=b.batches, help="B values for the paper scenario")
    p.add_argument("--sessions", type=_int_list, default=b.sessions, help="N values of the sessions scenario")
    p.add_argument("--live-seconds", type=float, default=b.live_seconds, help="measured seconds per sessions row")
    p.add_argument("--naive-frames", type=int, default=b.naive_frames, help="frames per naive scenario")
    p.add_argument("--device", default=b.device, help="torch device: auto, cuda, cuda:N, cpu")
    p.add_argument("--compile", choices=COMPILE_MODES, default=b.compile, help="torch.compile mode")
    p.add_argument("--size", type=int, default=b.size, help="frame side of the in-process scenarios")
    p.add_argument("--tag", default=b.tag, help="extra text for the results file name")
    p.add_argument(
        "--buckets",
        type=_int_list,
        default=b.buckets,
        help="batch buckets the in-process engine compiles (default: every one up to the largest needed, as a server)",
    )
    p.add_argument("--budget-s", type=float, default=None, help="skip steps that would overrun this many seconds")
    p.add_argument("--adapter-blocks", default=",".join(b.adapter_blocks), help="down_blocks and/or all")
    p.add_argument("--adapter-refresh", type=_int_list, default=b.adapter_refresh, help="adapter refresh periods")
    p.add_argument("--webrtc-clients", type=_int_list, default=b.webrtc_clients, help="client counts, webrtc")
    p.add_argument("--webrtc-codecs", default=",".join(b.webrtc_codecs), help="codecs of the webrtc scenario")
    p.add_argument("--webrtc-seconds", type=float, default=b.webrtc_seconds, help="measured seconds per webrtc run")
    p.add_argument("--webrtc-engine", choices=("diffusion", "preview"), default=b.webrtc_engine)
    p.add_argument("--serve-buckets", type=_int_list, default=b.serve_buckets, help="buckets of the server processes")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra option for every server process, repeatable (e.g. --serve-arg=--cache-dir=DIR)",
    )
    p.add_argument(
        "--media-processes",
        type=int,
        default=b.media_processes,
        help="webrtc: server processes without an engine that take the clients and feed the first one's "
        "engine over a Unix socket (default: 0 = the clients connect to the engine's server)",
    )
    p.add_argument("--serve-timeout", type=float, default=b.serve_timeout_s, help="seconds a server may take to start")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=b.log_level)
    add_speed_switches(p.add_argument_group("speed switches (the in-process engine and every server process)"))
    args = p.parse_args(list(argv))
    if (missing := diffusion_stack_missing()) is not None:
        raise ConfigError(
            f"livestyle bench runs the diffusion engine, and {missing} is not installed. Remedy: {INSTALL_STEP}."
        )
    codecs = tuple(c.strip().upper() for c in args.webrtc_codecs.split(",") if c.strip())
    if not codecs or any(c not in ("VP8", "H264") for c in codecs):
        raise ConfigError(f"--webrtc-codecs {args.webrtc_codecs!r} is not allowed; use VP8 and/or H264")
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        given = ", ".join(unknown) or "(none given)"
        raise ConfigError(f"--scenarios: unknown {given}; choose from {', '.join(SCENARIOS)}")
    blocks = tuple(s.strip() for s in args.adapter_blocks.split(",") if s.strip())
    if not blocks or any(x not in ("down_blocks", "all") for x in blocks):
        raise ConfigError(f"--adapter-blocks {args.adapter_blocks!r} is not allowed; use down_blocks and/or all")
    if not args.davis_dir.is_dir():
        raise ConfigError(
            f"DAVIS folder {args.davis_dir} does not exist; pass --davis-dir (the clips live in ../shared/data/davis, "
            "see the README's 'The shared folder')"
        )
    counts = (*args.batches, *args.sessions, *args.webrtc_clients)
    if not all((args.batches, args.sessions, args.webrtc_clients)) or any(not 1 <= n <= 16 for n in counts):
        raise ConfigError(f"--batches, --sessions and --webrtc-clients take counts of 1..16, got {list(counts)}")
    for flag, values in (("--buckets", args.buckets), ("--serve-buckets", args.serve_buckets)):
        if values is not None and (not values or any(v not in BATCH_BUCKETS for v in values)):
            raise ConfigError(f"{flag} {values} is not allowed; use a subset of {BATCH_BUCKETS}")
    if not 0 <= args.media_processes <= 16:
        raise ConfigError(f"--media-processes {args.media_processes} is not allowed; use 0..16")
    numbers = {
        "--frames": args.frames,
        "--naive-frames": args.naive_frames,
        "--live-seconds": args.live_seconds,
        "--webrtc-seconds": args.webrtc_seconds,
        "--serve-timeout": args.serve_timeout,
        "--budget-s": args.budget_s,
        "--adapter-refresh": min(args.adapter_refresh, default=0),
    }
    bad = [f"{k} {v}" for k, v in numbers.items() if v is not None and not v > 0]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be positive")
    config = BenchConfig(
        model=args.model,
        davis_dir=args.davis_dir,
        out_dir=args.out_dir,
        scenarios=scenarios,
        command=("livestyle", "bench", *argv),
        frames=args.frames,
        batches=args.batches,
        sessions=args.sessions,
        live_seconds=args.live_seconds,
        naive_frames=args.naive_frames,
        device=args.device,
        compile=args.compile,
        size=args.size,
        buckets=args.buckets,
        tag=args.tag,
        budget_s=args.budget_s,
        adapter_blocks=blocks,
        adapter_refresh=args.adapter_refresh,
        webrtc_clients=args.webrtc_clients,
        webrtc_codecs=codecs,
        webrtc_seconds=args.webrtc_seconds,
        webrtc_engine=args.webrtc_engine,
        serve_buckets=args.serve_buckets,
        serve_args=tuple(args.serve_arg),
        media_processes=args.media_processes,
        serve_timeout_s=args.serve_timeout,
        log_level=args.log_level,
        switches=speed_switches(args),
    )
    config.engine_config()  # size, buckets and batch fit together (ConfigError naming the values)
    return config


def load_eval_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Any:
    """`livestyle eval`: metric settings; with --sweep also the engine options and the grid."""
    from evaluation.config import EvalConfig
    from evaluation.sweep import SETTINGS, default_grid, grid_configs

    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="livestyle eval",
        description="Temporal consistency, sharpness and edit strength of a stylized video against its input "
        "(table, eval.json, per_frame.png); --sweep stylizes INPUT over a grid of settings and plots quality vs fps.",
    )
    p.add_argument("input", type=Path, help="the original video")
    p.add_argument("stylized", type=Path, nargs="?", help="its stylized version (not with --sweep)")
    p.add_argument("--out", type=Path, help="report folder (default: STYLIZED.eval/ or INPUT.sweep/ beside the video)")
    p.add_argument("--max-frames", type=int, help="compare (with --sweep: stylize) only the first N frames")
    p.add_argument(
        "--cut-threshold",
        type=float,
        default=DiffusionConfig().scene_cut_threshold,
        help="histogram distance counted as a scene cut (default: %(default)s, the engine's)",
    )
    p.add_argument("--sweep", action="store_true", help="stylize INPUT once per --grid setting, then evaluate each")
    p.add_argument(
        "--grid",
        action="append",
        help=f"with --sweep, repeatable: NAME=V1,V2,... with NAME one of {', '.join(SETTINGS)} "
        "(default: text-refresh=1,8, plus lllite-refresh=1,8 and adapter-strength=0.5,1.0 with --lllite)",
    )
    p.add_argument("--prompt", help="with --sweep: the style prompt of every run")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="logging level (default: info)")
    add_engine_arguments(p)
    args = p.parse_args(list(argv))
    engine_flags = [
        f"--{d.replace('_', '-')}" for d in (*_ENGINE_FIELDS, *_DIFFUSION_FIELDS) if getattr(args, d) is not None
    ]
    if not args.sweep:
        given = engine_flags + [f for f, v in (("--grid", args.grid), ("--prompt", args.prompt)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: used only with --sweep; add --sweep or leave it out")
    sweep: list[tuple[str, EngineConfig]] = []
    if args.sweep:
        base = engine_config(args, env)
        sweep = grid_configs(base, args.grid or default_grid(base))
    out = args.out
    if out is None:
        beside = args.input if args.sweep or args.stylized is None else args.stylized
        out = beside.with_name(f"{beside.stem}.{'sweep' if args.sweep else 'eval'}")
    return EvalConfig(
        input=args.input,
        stylized=args.stylized,
        out_dir=out,
        max_frames=args.max_frames,
        cut_threshold=args.cut_threshold,
        sweep=tuple(sweep),
        prompt=(args.prompt or "").strip(),
        log_level=args.log_level,
    )
