"""Server configuration, built once from the command line and the environment.

This is the only module that reads argv or os.environ. Every option has an
environment variable LIVESTYLE_<NAME> (command line wins).
"""

from __future__ import annotations

import argparse
import json
import os
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
    INDUCTOR_CHOICES,
    TEXT_MODES,
    ConfigError,
    DiffusionConfig,
    EngineConfig,
)
from server.access import read_tokens_file
from server.turn import TurnConfig
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
    g.add_argument("--engine", choices=ENGINE_KINDS, help="auto | diffusion | preview (LIVESTYLE_ENGINE)")
    g.add_argument("--model", help="HF id, local dir, 'tiny' or random:DIR (LIVESTYLE_MODEL)")
    g.add_argument("--max-batch", type=int, help=f"frames per engine step: {BATCH_BUCKETS} (LIVESTYLE_MAX_BATCH)")
    g.add_argument("--device", help="torch device for the diffusion engine: auto, cuda, cuda:N, cpu")
    g.add_argument("--steps", type=int, help="denoising steps per frame, 1..4 (LIVESTYLE_STEPS)")
    g.add_argument("--text-mode", choices=TEXT_MODES, help="when the text encoder runs (LIVESTYLE_TEXT_MODE)")
    g.add_argument("--text-refresh", type=int, help="steps between text-encoder refreshes in refresh mode")
    g.add_argument("--text-image-size", type=int, help="frame side the text encoder sees (default 256)")
    g.add_argument("--text-tokens", type=int, help="fixed text-encoder sequence length (default 256)")
    g.add_argument("--seed", type=int, help="seed of each session's fixed noise")
    g.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile mode for the UNet (LIVESTYLE_COMPILE)")
    g.add_argument("--buckets", type=_int_list, help="batch sizes compiled at start, e.g. 1,4,8 (default: all)")
    g.add_argument("--lllite", help="temporal LLLite adapter checkpoint (.safetensors) (LIVESTYLE_LLLITE)")
    g.add_argument("--lllite-blocks", choices=("down_blocks", "all"), help="adapter sites (default down_blocks)")
    g.add_argument("--lllite-refresh", type=int, help="steps between adapter conditioning refreshes (default 8)")
    g.add_argument("--adapter-strength", type=float, help="initial adapter strength 0..1.5 (default 1.0)")
    # diffusion-perf: speed switches (README, "Speed switches")
    d = DiffusionConfig()
    g.add_argument(
        "--text-length-step",
        type=int,
        help=f"text-encoder length bucket step in tokens, 0 = fixed length (default {d.text_length_step})",
    )
    g.add_argument(
        "--text-prefix-cache",
        type=_flag,
        help=f"cache the system prefix's K/V, 1/0 (default {int(d.text_prefix_cache)})",
    )
    g.add_argument(
        "--text-compile", type=_flag, help=f"torch.compile the text encoder, 1/0 (default {int(d.text_compile)})"
    )
    g.add_argument(
        "--channels-last", choices=CHANNELS_LAST_CHOICES, help=f"channels-last weights (default {d.channels_last})"
    )
    g.add_argument("--fuse-qkv", type=_flag, help=f"fused UNet attention projections, 1/0 (default {int(d.fuse_qkv)})")
    g.add_argument(
        "--inductor",
        type=_names,
        help=f"UNet inductor switches, comma-separated or none: {', '.join(INDUCTOR_CHOICES)} "
        f"(default {','.join(d.inductor) or 'none'})",
    )
    g.add_argument(
        "--stream-priorities",
        type=_flag,
        help=f"UNet stream above side streams, 1/0 (default {int(d.stream_priorities)})",
    )
    g.add_argument(
        "--compile-cache",
        type=_optional_path,
        help=f"directory for compiled artifacts, or none (default {d.compile_cache_dir})",
    )


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livestyle serve", description="Run the WebRTC stylization server.")
    p.add_argument("--host", help="address to listen on (LIVESTYLE_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (LIVESTYLE_PORT, default 8080)")
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (LIVESTYLE_MAX_SESSIONS, default 4)")
    p.add_argument("--idle-timeout", type=float, help="seconds without video before a session closes")
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
    g = p.add_argument_group("remote use")
    g.add_argument(
        "--tls-self-signed",
        action="store_true",
        default=None,
        help="HTTPS with a generated self-signed certificate (LIVESTYLE_TLS_SELF_SIGNED=1)",
    )
    g.add_argument("--tls-dir", type=Path, help="where the self-signed certificate is kept (LIVESTYLE_TLS_DIR)")
    g.add_argument("--auth-token", help="bearer token required for /offer and /whip (LIVESTYLE_AUTH_TOKEN)")
    g.add_argument("--tokens-file", type=Path, help="file with one allowed token per line (LIVESTYLE_TOKENS_FILE)")
    g.add_argument("--offer-rate", type=float, help="offers per minute per client address (default 30)")
    g.add_argument("--max-viewers", type=int, help="viewers per shared stream (default 10)")
    g.add_argument("--watch-ttl", type=float, help="watch link lifetime in seconds (default 43200)")
    g.add_argument("--turn-url", action="append", help="TURN URL for short-lived credentials, repeatable")
    g.add_argument("--turn-secret", help="the TURN server's static-auth-secret (LIVESTYLE_TURN_SECRET)")
    g.add_argument("--turn-ttl", type=int, help="seconds a TURN credential stays valid (default 3600)")
    add_engine_arguments(p)
    return p


# argparse dest -> (environment variable, type, field of the config dataclass)
_SERVER_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "host": ("LIVESTYLE_HOST", str, "host"),
    "port": ("LIVESTYLE_PORT", int, "port"),
    "max_sessions": ("LIVESTYLE_MAX_SESSIONS", int, "max_sessions"),
    "idle_timeout": ("LIVESTYLE_IDLE_TIMEOUT", float, "idle_timeout_s"),
    "tls_cert": ("LIVESTYLE_TLS_CERT", Path, "tls_cert"),
    "tls_key": ("LIVESTYLE_TLS_KEY", Path, "tls_key"),
    "log_level": ("LIVESTYLE_LOG_LEVEL", str, "log_level"),
    "tls_self_signed": ("LIVESTYLE_TLS_SELF_SIGNED", _flag, "tls_self_signed"),
    "tls_dir": ("LIVESTYLE_TLS_DIR", Path, "tls_dir"),
    "offer_rate": ("LIVESTYLE_OFFER_RATE", float, "offer_rate_per_min"),
    "max_viewers": ("LIVESTYLE_MAX_VIEWERS", int, "max_viewers"),
    "watch_ttl": ("LIVESTYLE_WATCH_TTL", float, "watch_ttl_s"),
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
    "inductor": ("LIVESTYLE_INDUCTOR", _names, "inductor"),
    "stream_priorities": ("LIVESTYLE_STREAM_PRIORITIES", _flag, "stream_priorities"),
    "compile_cache": ("LIVESTYLE_COMPILE_CACHE", _optional_path, "compile_cache_dir"),
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
    return ServerConfig(engine=engine_config(args, env), **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StylizeConfig:
    """`livestyle stylize IN OUT --prompt P`: run the engine over a video file."""

    input: Path
    """Video file to read."""
    output: Path
    """Video file to write (stylized frames, the input's audio copied when present)."""
    prompt: str
    """Style prompt for the whole file."""
    engine: EngineConfig
    """Engine settings; frames go through in batches of engine.max_batch consecutive frames."""
    log_level: str = "info"
    """Logging level."""

    def __post_init__(self) -> None:
        if not self.input.is_file():
            raise ConfigError(f"input video {self.input} does not exist")
        if self.output.resolve() == self.input.resolve():
            raise ConfigError("output must be a different file than the input")
        if len(self.prompt) > self.engine.max_prompt_chars:
            raise ConfigError(f"prompt has {len(self.prompt)} characters; at most {self.engine.max_prompt_chars}")


def load_stylize_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> StylizeConfig:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="livestyle stylize", description="Stylize a video file with the engine.")
    p.add_argument("input", type=Path, help="input video (any format PyAV/FFmpeg reads)")
    p.add_argument("output", type=Path, help="output video (.mp4)")
    p.add_argument("--prompt", required=True, help="style prompt, e.g. 'oil painting, vibrant colors'")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_engine_arguments(p)
    args = p.parse_args(list(argv))
    return StylizeConfig(args.input, args.output, args.prompt.strip(), engine_config(args, env), args.log_level)


def load_bench_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Any:
    from bench.harness import SCENARIOS, BenchConfig

    env = os.environ if environ is None else environ
    repo = Path(__file__).resolve().parent.parent
    shared = repo.parent / "shared"
    p = argparse.ArgumentParser(prog="livestyle bench", description="Benchmark the engine; writes a JSON result.")
    p.add_argument(
        "--model",
        default=env.get("LIVESTYLE_MODEL") or f"random:{shared / 'reference'}",
        help="random:DIR (full-size random weights from reference configs; default), tiny, HF id or dir",
    )
    p.add_argument("--davis-dir", type=Path, default=shared / "data" / "davis", help="folder of DAVIS .mp4 clips")
    p.add_argument("--out-dir", type=Path, default=repo / "bench" / "results")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    p.add_argument("--frames", type=int, default=480, help="frames per offline measurement")
    p.add_argument("--batches", type=_int_list, default=(1, 8, 16), help="B values for the paper scenario")
    p.add_argument("--sessions", type=_int_list, default=(1, 2, 4, 8, 16), help="N values, many sessions")
    p.add_argument("--live-seconds", type=float, default=6.0, help="measured seconds per real-time scenario")
    p.add_argument("--naive-frames", type=int, default=24)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", choices=COMPILE_MODES, default="auto")
    p.add_argument("--tag", default="", help="extra text for the result file name")
    p.add_argument(
        "--buckets",
        type=_int_list,
        default=(1, 8, 16),
        help="batch buckets to compile (default 1,8,16: ~80 s each, so the run fits 10 minutes; other sizes pad up)",
    )
    p.add_argument("--webrtc-clients", type=_int_list, default=(1, 2, 4, 8), help="client counts, webrtc scenario")
    p.add_argument("--webrtc-codecs", default="VP8,H264", help="codecs of the webrtc scenario")
    p.add_argument("--webrtc-seconds", type=float, default=8.0)
    p.add_argument("--webrtc-engine", choices=("diffusion", "preview"), default="diffusion")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    args = p.parse_args(list(argv))
    codecs = tuple(c.strip().upper() for c in args.webrtc_codecs.split(",") if c.strip())
    if not codecs or any(c not in ("VP8", "H264") for c in codecs):
        raise ConfigError(f"webrtc codecs {args.webrtc_codecs!r} are not allowed; use VP8 and/or H264")
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if not args.davis_dir.is_dir():
        raise ConfigError(f"DAVIS folder {args.davis_dir} does not exist; pass --davis-dir")
    bad = [b for b in (*args.batches, *args.sessions) if not 1 <= b <= 16]
    if bad:
        raise ConfigError(f"batch and session counts must be 1..16, got {bad}")
    config = BenchConfig(
        model=args.model,
        davis_dir=args.davis_dir,
        out_dir=args.out_dir,
        scenarios=scenarios,
        frames=args.frames,
        batches=args.batches,
        sessions=args.sessions,
        live_seconds=args.live_seconds,
        naive_frames=args.naive_frames,
        device=args.device,
        compile=args.compile,
        tag=args.tag,
        buckets=args.buckets,
        webrtc_clients=args.webrtc_clients,
        webrtc_codecs=codecs,
        webrtc_seconds=args.webrtc_seconds,
        webrtc_engine=args.webrtc_engine,
    )
    object.__setattr__(config, "log_level", args.log_level)
    return config
