"""The engine's wire format between processes on one machine (a Unix stream socket):
media processes feed one engine process with the same arrays and plain messages that
`pipeline.messages` defines in-process.

A message is an 8-byte prefix (header length, payload length; big-endian u32 each), a
UTF-8 JSON object (the header, always with a "t" naming its type), then the payload: the
raw RGB bytes of a frame, or nothing. Every length is checked before anything is read,
so a broken or hostile peer costs one closed connection, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from fractions import Fraction
from typing import Any, cast

import numpy as np

from pipeline.messages import (
    AddSession,
    Command,
    EngineFailed,
    EngineInfo,
    Event,
    FrameIn,
    FrameOut,
    PromptApplied,
    RemoveSession,
    SessionError,
    SetAdapterStrength,
    SetPrompt,
)

PREFIX = struct.Struct("!II")
MAX_HEADER_BYTES = 64 * 1024
"""A header is a few hundred bytes; a prompt is capped far below this by the engine."""
MAX_SIDE = 4096
MAX_PAYLOAD_BYTES = MAX_SIDE * MAX_SIDE * 3
MAX_ID_CHARS = 200
WIRE_VERSION = 1


class WireError(Exception):
    """The peer broke the protocol; the connection is closed."""


def _lengths(prefix: bytes | bytearray) -> tuple[int, int]:
    header_len, payload_len = PREFIX.unpack(prefix)
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise WireError(f"header of {header_len} bytes (allowed: 2..{MAX_HEADER_BYTES})")
    if payload_len > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {payload_len} bytes (allowed: at most {MAX_PAYLOAD_BYTES})")
    return header_len, payload_len


def _header(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise WireError("header is not an object with a string 't'")
    return header


async def read_message(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """The next message from a stream reader (a peer in tests); raises
    asyncio.IncompleteReadError at end of stream, WireError on a malformed one."""
    header_len, payload_len = _lengths(await reader.readexactly(PREFIX.size))
    raw = await reader.readexactly(header_len)
    payload = await reader.readexactly(payload_len) if payload_len else b""
    return _header(raw), payload


class MessageStream(asyncio.BufferedProtocol):
    """One connection's protocol: the kernel writes each message's parts straight into a
    buffer of their own (a frame's 768 KiB arrive without the copies and the per-chunk
    Python of a StreamReader), complete messages wait for `read()` (reading pauses past
    MAX_PENDING of them), and the transport takes what is written."""

    MAX_PENDING = 8

    def __init__(self, on_connected: Callable[[MessageStream], None] | None = None) -> None:
        """on_connected: called once the transport is there (a server's per-connection start)."""
        self._on_connected = on_connected
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._pending: deque[tuple[dict[str, Any], bytes | bytearray]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._lost = self._loop.create_future()
        self._paused = False
        self._payload_len = 0
        self._message_header: dict[str, Any] = {}
        self._expect(0, PREFIX.size)

    def _expect(self, stage: int, size: int) -> None:
        self._stage, self._buf, self._got = stage, bytearray(size), 0
        self._view = memoryview(self._buf)

    # ---- asyncio.BufferedProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, same methods
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._got :]

    def buffer_updated(self, nbytes: int) -> None:
        self._got += nbytes
        if self._got < len(self._buf):
            return
        try:
            self._advance()
        except WireError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._fail(ConnectionError(str(exc)))
        self._fail(asyncio.IncompleteReadError(bytes(self._buf[: self._got]), len(self._buf)))
        if not self._lost.done():
            self._lost.set_result(None)

    def _advance(self) -> None:
        if self._stage == 0:
            header_len, self._payload_len = _lengths(self._buf)
            self._expect(1, header_len)
        elif self._stage == 1 and self._payload_len:
            self._message_header = _header(self._buf)
            self._expect(2, self._payload_len)
        else:
            if self._stage == 1:
                self._push(_header(self._buf), b"")
            else:
                self._push(self._message_header, self._buf)
            self._expect(0, PREFIX.size)

    def _push(self, header: dict[str, Any], payload: bytes | bytearray) -> None:
        self._pending.append((header, payload))
        self._wake()
        if len(self._pending) >= self.MAX_PENDING and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ---- the connection's owner -----------------------------------------------------------

    async def read(self) -> tuple[dict[str, Any], bytes | bytearray]:
        """The next message; after the last one, the error that ended the stream
        (asyncio.IncompleteReadError at its end, WireError, ConnectionError)."""
        while not self._pending:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._waiter
        message = self._pending.popleft()
        if self._paused and len(self._pending) < self.MAX_PENDING and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return message

    def writelines(self, buffers: list[bytes | memoryview]) -> None:
        if not self.is_closing():
            assert self.transport is not None
            self.transport.writelines(buffers)

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    def close(self) -> None:
        """Ends the connection now, unsent bytes dropped: a peer that stopped reading must not
        hold a shutdown (a graceful close waits for it to read them all)."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await self._lost


def encode(header: dict[str, Any], payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """The message as buffers for `writer.writelines` (the payload is not copied here)."""
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return [PREFIX.pack(len(raw), len(payload)), raw, payload]


# ---- typed fields ----------------------------------------------------------------------


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise WireError(f"{header.get('t')}: field {name!r} is {value!r}, not {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WireError(f"{header.get('t')}: field {name!r} is not finite")
    return value


def session_id(header: dict[str, Any]) -> str:
    sid = field(header, "sid", str)
    if not 0 < len(sid) <= MAX_ID_CHARS:
        raise WireError(f"session id of {len(sid)} characters (allowed: 1..{MAX_ID_CHARS})")
    return str(sid)


def _time_base(header: dict[str, Any]) -> Fraction:
    tb = header.get("tb")
    if not (isinstance(tb, list) and len(tb) == 2 and all(type(x) is int for x in tb) and 0 < tb[0] and 0 < tb[1]):
        raise WireError(f"time base {tb!r} is not [numerator, denominator] of positive ints")
    return Fraction(tb[0], tb[1])


def _image(header: dict[str, Any], payload: bytes | bytearray) -> np.ndarray:
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(x) is int for x in shape)):
        raise WireError(f"frame shape {shape!r} is not [height, width, 3]")
    h, w, c = shape
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE and c == 3) or h * w * 3 != len(payload):
        raise WireError(f"frame shape {shape} does not match its {len(payload)} bytes (sides 1..{MAX_SIDE})")
    return np.frombuffer(payload, np.uint8).reshape(h, w, 3)


def _frame_message(kind: str, frame: FrameIn | FrameOut, sid: str, **fields: Any) -> list[bytes | memoryview]:
    """A frame's message either way: its timestamps and shape in the header, its RGB bytes
    as the payload (not copied when the array is already contiguous uint8)."""
    image = np.ascontiguousarray(frame.image, dtype=np.uint8)
    tb = frame.time_base
    header = {"t": kind, "sid": sid, "pts": int(frame.pts), "tb": [tb.numerator, tb.denominator], "t_in": frame.t_in}
    return encode({**header, **fields, "shape": list(image.shape)}, image.reshape(-1).data)


def _frame_parts(header: dict[str, Any], payload: bytes | bytearray) -> tuple[str, np.ndarray, int, Fraction, float]:
    """What every frame message has: session id, image, pts, time base, t_in."""
    t_in = float(field(header, "t_in", (int, float)))
    return session_id(header), _image(header, payload), int(field(header, "pts", int)), _time_base(header), t_in


# ---- media process -> engine process ------------------------------------------------------


def encode_command(cmd: Command) -> list[bytes | memoryview]:
    if isinstance(cmd, AddSession):
        return encode({"t": "open", "sid": cmd.session_id, "prompt": cmd.prompt, "seq": cmd.seq})
    if isinstance(cmd, RemoveSession):
        return encode({"t": "close", "sid": cmd.session_id})
    if isinstance(cmd, SetPrompt):
        return encode({"t": "prompt", "sid": cmd.session_id, "prompt": cmd.prompt, "seq": cmd.seq})
    if isinstance(cmd, SetAdapterStrength):
        return encode({"t": "adapter", "sid": cmd.session_id, "value": cmd.value, "seq": cmd.seq})
    return encode({"t": "reseed", "sid": cmd.session_id, "seed": cmd.seed, "seq": cmd.seq})


def encode_frame_in(frame: FrameIn) -> list[bytes | memoryview]:
    return _frame_message("frame", frame, frame.session_id)


def decode_frame_in(header: dict[str, Any], payload: bytes | bytearray) -> FrameIn:
    return FrameIn(*_frame_parts(header, payload))


# ---- engine process -> media process ------------------------------------------------------


def encode_hello(info: EngineInfo, health: dict[str, object]) -> list[bytes | memoryview]:
    return encode({"t": "hello", "version": WIRE_VERSION, "info": asdict(info), "health": health})


def decode_info(header: dict[str, Any]) -> EngineInfo:
    """The hello's engine info (its version is checked by the caller, which gives up on a mismatch)."""
    info = field(header, "info", dict)
    try:
        return EngineInfo(**info)
    except TypeError as exc:
        raise WireError(f"engine info {info!r}: {exc}") from None


def encode_health(health: dict[str, object]) -> list[bytes | memoryview]:
    return encode({"t": "health", "health": health})


def encode_frame_out(sid: str, frame: FrameOut) -> list[bytes | memoryview]:
    return _frame_message("out", frame, sid, t_out=frame.t_out, prompt_seq=frame.prompt_seq)


def decode_frame_out(header: dict[str, Any], payload: bytes | bytearray) -> FrameOut:
    t_out, prompt_seq = float(field(header, "t_out", (int, float))), int(field(header, "prompt_seq", int))
    return FrameOut(*_frame_parts(header, payload), t_out, prompt_seq)


def encode_event(sid: str, event: Event) -> list[bytes | memoryview]:
    if isinstance(event, PromptApplied):
        return encode({"t": "applied", "sid": sid, "seq": event.seq, "latency_ms": event.latency_ms})
    if isinstance(event, SessionError):
        return encode({"t": "error", "sid": sid, "code": event.code, "message": event.message, "seq": event.seq})
    message = event.message if isinstance(event, EngineFailed) else str(event)
    return encode({"t": "failed", "sid": sid, "message": message})


def decode_event(header: dict[str, Any]) -> Event:
    sid, kind = session_id(header), header["t"]
    if kind == "applied":
        return PromptApplied(sid, int(field(header, "seq", int)), float(field(header, "latency_ms", (int, float))))
    if kind == "error":
        seq = header.get("seq")
        if seq is not None and type(seq) is not int:
            raise WireError(f"error: seq {seq!r} is not an int")
        return SessionError(sid, field(header, "code", str), str(field(header, "message", str)), seq)
    return EngineFailed(str(field(header, "message", str)))
