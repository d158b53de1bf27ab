"""The `control` data-channel protocol: typed JSON messages with a version field.

client -> server: set_prompt {prompt, seq}, set_adapter_strength {value, seq}, ping {t},
                  create_watch {}, revoke_watch {}
server -> client: hello {session_id, engine}, pong {t}, prompt_applied {seq, latency_ms},
                  stats {fps_in, fps_out, dropped, latency_ms}, error {code, message, seq?},
                  watch {token, path, expires_in_s} (token null after a revoke), viewers {count}

Parsing never raises anything but ProtocolError, whose code and message go back to
the client as an `error` message; the session carries on. Whatever a client sends, the
parser does bounded work: at most MAX_MESSAGE_BYTES, numbers that fit a double (no
400-digit integers, no NaN or Infinity), at most MAX_DEPTH levels of nesting, and error
messages that quote at most a few characters of what was sent.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024
MAX_DEPTH = 8
"""Nesting levels a message may have (ours are flat; extra fields are ignored)."""
MAX_NUMBER_CHARS = 24
"""Longest number literal accepted: every protocol number fits a double (seq < 2**53)."""
CHANNEL_LABEL = "control"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, seq: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq
        self.retry_after_s = retry_after_s
        """For code rate_limited: when the next message will be accepted."""


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
    """This stream's watch link: the live one again, or (renew) a new one that ends the old."""

    renew: bool = False


@dataclass(frozen=True)
class RevokeWatchMsg:
    """Kill this stream's watch link and disconnect its viewers."""


@dataclass(frozen=True)
class RerollMsg:
    """New noise for the session's frames (same prompt, another take); seed None: the
    server picks one and says which in a `seed` reply."""

    seq: int
    seed: int | None = None


ClientMessage = SetPromptMsg | SetAdapterStrengthMsg | PingMsg | CreateWatchMsg | RevokeWatchMsg | RerollMsg
CLIENT_TYPES = ("set_prompt", "set_adapter_strength", "ping", "create_watch", "revoke_watch", "reroll")
MAX_ADAPTER_STRENGTH = 1.5
MAX_SEED = 2**31 - 1


def parse_client_message(raw: str | bytes, max_prompt_chars: int) -> ClientMessage:
    data = _decode(raw)
    version = data.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = _show(version)
        raise ProtocolError("bad_version", f"protocol version {shown} is not supported; use {PROTOCOL_VERSION}")
    kind = data.get("type")
    if kind == "set_prompt":
        seq = _seq(data)
        return SetPromptMsg(prompt=check_prompt(data.get("prompt"), max_prompt_chars, seq), seq=seq)
    if kind == "set_adapter_strength":
        seq = _seq(data)
        value = _number(data, "value", seq)
        if not 0.0 <= value <= MAX_ADAPTER_STRENGTH:
            raise ProtocolError("bad_value", f"adapter strength {value} is outside 0..{MAX_ADAPTER_STRENGTH}", seq)
        return SetAdapterStrengthMsg(value=value, seq=seq)
    if kind == "ping":
        return PingMsg(t=_number(data, "t", None))
    if kind == "create_watch":
        renew = data.get("renew", False)
        if not isinstance(renew, bool):
            raise ProtocolError("bad_message", f"'renew' must be true or false, got {_show(renew)}")
        return CreateWatchMsg(renew=renew)
    if kind == "revoke_watch":
        return RevokeWatchMsg()
    if kind == "reroll":
        seq = _seq(data)
        seed = data.get("seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
            raise ProtocolError("bad_value", f"'seed' must be an integer in 0..{MAX_SEED}, got {_show(seed)}", seq)
        return RerollMsg(seq=seq, seed=seed)
    raise ProtocolError("unknown_type", f"unknown message type {_show(kind)}; expected {', '.join(CLIENT_TYPES)}")


def check_prompt(prompt: object, max_prompt_chars: int, seq: int | None = None) -> str:
    """The prompt with its whitespace collapsed to single spaces, or ProtocolError: at most
    max_prompt_chars characters, none of them control characters or unpaired surrogates
    (which would break logs, tokenizers and UTF-8 encoders further down)."""
    if not isinstance(prompt, str):
        raise ProtocolError("bad_message", f"'prompt' must be a string, got {_show(prompt)}", seq)
    prompt = " ".join(prompt.split())
    if len(prompt) > max_prompt_chars:
        raise ProtocolError(
            "prompt_too_long", f"prompt has {len(prompt)} characters; at most {max_prompt_chars} are allowed", seq
        )
    bad = next((c for c in prompt if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise ProtocolError(
            "prompt_invalid", f"prompt contains the character U+{ord(bad):04X}; use printable text only", seq
        )
    return prompt


class _Rejected(Exception):
    """Raised from the json hooks; becomes a ProtocolError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Rejected("bad_message", f"a number has {len(text)} digits; numbers must fit a double")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Rejected("bad_message", f"a number has {len(text)} characters; numbers must fit a double")
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected("bad_message", f"the number {text} is outside the range of a double")
    return value


def _constant(name: str) -> None:
    raise _Rejected("bad_json", f"{name} is not a JSON value")


def _decode(raw: str | bytes) -> dict[str, Any]:
    """Size, UTF-8, JSON, number and nesting checks; returns the top-level object."""
    if not isinstance(raw, (str, bytes)):
        raise ProtocolError("bad_message", f"message must be text, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        unit = "bytes" if isinstance(raw, bytes) else "characters"
        raise ProtocolError("message_too_large", f"message is {len(raw)} {unit}; the limit is {MAX_MESSAGE_BYTES}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_json", "message is not UTF-8 text") from None
    try:
        data = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _Rejected as exc:
        raise ProtocolError(exc.code, exc.message) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise ProtocolError("bad_json", f"message is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", f"message must be a JSON object, got {_show(data)}")
    if _too_deep(data):
        raise ProtocolError("bad_message", f"message is nested more than {MAX_DEPTH} levels deep")
    return data


def _too_deep(data: object) -> bool:
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _show(value: object) -> str:
    """A short description of a client's value for an error message (never its whole text)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _seq(data: dict[str, Any]) -> int:
    value = data.get("seq")
    if type(value) is not int or not 0 <= value < 2**53:
        raise ProtocolError("bad_message", f"'seq' must be an integer in 0..2**53-1, got {_show(value)}")
    return value


def _number(data: dict[str, Any], name: str, seq: int | None) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("bad_message", f"'{name}' must be a number, got {_show(value)}", seq)
    return float(value)  # finite: the json hooks refused anything else


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
class SeedMsg:
    """The seed a reroll took (to note or send again for the same take)."""

    seed: int
    seq: int
    type: str = "seed"


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


ServerMessage = HelloMsg | PongMsg | PromptAppliedMsg | StatsMsg | ErrorMsg | WatchMsg | ViewersMsg | SeedMsg


def encode_server_message(msg: ServerMessage) -> str:
    keep_null = {"latency_ms", "token", "path", "expires_in_s"}
    body = {k: v for k, v in asdict(msg).items() if v is not None or k in keep_null}
    return json.dumps({"v": PROTOCOL_VERSION, **body}, separators=(",", ":"))
