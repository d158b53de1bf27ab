"""The `control` data-channel protocol: typed JSON messages with a version field.

client -> server: set_prompt {prompt, seq}, set_adapter_strength {value, seq}, ping {t},
                  create_watch {}, revoke_watch {}
server -> client: hello {session_id, engine}, pong {t}, prompt_applied {seq, latency_ms},
                  stats {fps_in, fps_out, dropped, latency_ms}, error {code, message, seq?},
                  watch {token, path, expires_in_s} (token null after a revoke), viewers {count}

Parsing never raises anything but ProtocolError, whose code and message go back to
the client as an `error` message; the session carries on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024
CHANNEL_LABEL = "control"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq


# ---- client -> server -------------------------------------------------------------------


@dataclass(frozen=True)
class SetPromptMsg:
    prompt: str
    seq: int


@dataclass(frozen=True)
class SetAdapterStrengthMsg:
    value: float
    seq: int


@dataclass(frozen=True)
class PingMsg:
    t: float


@dataclass(frozen=True)
class CreateWatchMsg:
    """Make (or replace) this stream's watch link."""


@dataclass(frozen=True)
class RevokeWatchMsg:
    """Kill this stream's watch link and disconnect its viewers."""


ClientMessage = SetPromptMsg | SetAdapterStrengthMsg | PingMsg | CreateWatchMsg | RevokeWatchMsg
MAX_ADAPTER_STRENGTH = 1.5


def parse_client_message(raw: str | bytes, max_prompt_chars: int) -> ClientMessage:
    if isinstance(raw, bytes):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError("message_too_large", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_json", "message is not UTF-8 text") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large", f"message is {len(raw)} characters; the limit is {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", f"message must be a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {version!r} is not supported; use {PROTOCOL_VERSION}")
    kind = data.get("type")
    if kind == "set_prompt":
        seq = _int_field(data, "seq")
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise ProtocolError("bad_message", "set_prompt needs a string 'prompt'", seq)
        prompt = prompt.strip()
        if len(prompt) > max_prompt_chars:
            raise ProtocolError(
                "prompt_too_long",
                f"prompt has {len(prompt)} characters; at most {max_prompt_chars} are allowed",
                seq,
            )
        return SetPromptMsg(prompt=prompt, seq=seq)
    if kind == "set_adapter_strength":
        seq = _int_field(data, "seq")
        value = data.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError("bad_message", "set_adapter_strength needs a number 'value'", seq)
        if not 0.0 <= value <= MAX_ADAPTER_STRENGTH:
            raise ProtocolError("bad_value", f"adapter strength {value} is outside 0..{MAX_ADAPTER_STRENGTH}", seq)
        return SetAdapterStrengthMsg(value=float(value), seq=seq)
    if kind == "ping":
        t = data.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ProtocolError("bad_message", "ping needs a finite number 't'")
        return PingMsg(t=float(t))
    if kind == "create_watch":
        return CreateWatchMsg()
    if kind == "revoke_watch":
        return RevokeWatchMsg()
    raise ProtocolError(
        "unknown_type",
        f"unknown message type {kind!r}; expected set_prompt, set_adapter_strength, ping, create_watch or revoke_watch",
    )


def _int_field(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ProtocolError("bad_message", f"'{name}' must be a non-negative integer, got {value!r}")
    return value


# ---- server -> client -------------------------------------------------------------------


@dataclass(frozen=True)
class HelloMsg:
    session_id: str
    engine: dict[str, Any]
    type: str = "hello"


@dataclass(frozen=True)
class PongMsg:
    t: float
    type: str = "pong"


@dataclass(frozen=True)
class PromptAppliedMsg:
    seq: int
    latency_ms: float
    type: str = "prompt_applied"


@dataclass(frozen=True)
class StatsMsg:
    fps_in: float
    fps_out: float
    dropped: int
    latency_ms: float | None
    type: str = "stats"


@dataclass(frozen=True)
class ErrorMsg:
    code: str
    message: str
    seq: int | None = None
    type: str = "error"


@dataclass(frozen=True)
class WatchMsg:
    token: str | None
    path: str | None
    expires_in_s: int | None
    type: str = "watch"


@dataclass(frozen=True)
class ViewersMsg:
    count: int
    type: str = "viewers"


ServerMessage = HelloMsg | PongMsg | PromptAppliedMsg | StatsMsg | ErrorMsg | WatchMsg | ViewersMsg


def encode_server_message(msg: ServerMessage) -> str:
    keep_null = {"latency_ms", "token", "path", "expires_in_s"}
    body = {k: v for k, v in asdict(msg).items() if v is not None or k in keep_null}
    return json.dumps({"v": PROTOCOL_VERSION, **body}, separators=(",", ":"))
