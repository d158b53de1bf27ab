"""A session's `control` data channel: the per-session rate limit, parsing, `error`
replies and a summarised log of rejected messages. What a valid message does is the
Session's business (its dispatch callback); whatever a client sends, nothing here raises
into aiortc, whose receive loop would otherwise end the whole peer connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCDataChannel, RTCSctpTransport
from aiortc.rtcsctptransport import WEBRTC_BINARY, WEBRTC_STRING

from signaling.protocol import (
    ClientMessage,
    ErrorMsg,
    ProtocolError,
    ServerMessage,
    encode_server_message,
    parse_client_message,
)


@dataclass(frozen=True)
class ControlLimits:
    rate_per_s: float = 20.0
    """Control messages a session may send per second on average (the page sends a ping a
    second plus one message per user action); beyond it they are dropped."""
    burst: int = 40
    """Messages a session may send at once before the rate applies (preset clicks, a slider)."""
    rate_limited_reply_s: float = 1.0
    """At most one `rate_limited` error reply per this many seconds."""
    error_log_interval_s: float = 10.0
    """Rejected messages are logged as one line at once, then one summary line per interval."""


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def level(self, now: float) -> float:
        """Tokens held at `now` (refilled, nothing taken)."""
        return min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)

    def take(self, now: float) -> bool:
        self._tokens = self.level(now)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until take() can succeed again (after a refused one; at `now` if given)."""
        tokens = self._tokens if now is None else self.level(now)
        return max(0.0, 1.0 - tokens) / self.rate


class ErrorTally:
    """Per-session log of rejected messages with bounded volume and memory: the first
    rejection of an interval is logged with its detail, the rest only counted by code and
    logged as one summary line when the interval is over."""

    MAX_CODES = 32  # codes come from a fixed set; the bound is only a guard

    def __init__(self, log: logging.LoggerAdapter, interval_s: float) -> None:  # type: ignore[type-arg]
        self._log = log
        self._interval_s = interval_s
        self._window_start: float | None = None
        self._counts: dict[str, int] = {}

    def record(
        self, code: str, detail: str, now: float, *, level: int = logging.INFO, exc_info: BaseException | None = None
    ) -> None:
        self.flush(now)
        if self._window_start is None:
            self._window_start = now
            self._log.log(level, "control error %s: %s", code, detail, exc_info=exc_info)
            return
        if code in self._counts or len(self._counts) < self.MAX_CODES:
            self._counts[code] = self._counts.get(code, 0) + 1
        else:
            self._counts["other"] = self._counts.get("other", 0) + 1

    def flush(self, now: float) -> None:
        """Ends the interval once it is over (called on every rejection and by the session's tick)."""
        if self._window_start is None or now - self._window_start < self._interval_s:
            return
        if self._counts:
            total = sum(self._counts.values())
            by_code = ", ".join(f"{code}={n}" for code, n in sorted(self._counts.items(), key=lambda kv: -kv[1]))
            self._log.info("%d more control errors in the last %.0f s: %s", total, now - self._window_start, by_code)
        self._window_start = None
        self._counts = {}


class ControlChannel:
    """Owns the session's control RTCDataChannel once the peer opened it."""

    def __init__(
        self,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        limits: ControlLimits,
        max_prompt_chars: int,
        dispatch: Callable[[ClientMessage], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """dispatch: does what a valid message asks; may raise ProtocolError to answer `error`."""
        self._clock = clock
        now = clock()
        self._log = log
        self._limits = limits
        self._max_prompt_chars = max_prompt_chars
        self._dispatch = dispatch
        self._bucket = TokenBucket(limits.rate_per_s, limits.burst, now)
        self._tally = ErrorTally(log, limits.error_log_interval_s)
        self._rate_reply_at: float | None = None
        self._channel: RTCDataChannel | None = None
        self.last_message_at: float | None = None
        """time.monotonic() of the newest message, valid or not: the page's heartbeat."""
        self.received = 0
        self.rate_limited = 0

    @property
    def attached(self) -> bool:
        return self._channel is not None

    def attach(self, channel: RTCDataChannel, on_open: Callable[[], None]) -> None:
        self._channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            on_open()
        else:
            channel.on("open", on_open)

    def send(self, msg: ServerMessage) -> None:
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            ch.send(encode_server_message(msg))

    def admit_http(self) -> None:
        """Charge a control request that came over HTTP (a WHIP stream's prompt endpoint) to
        the same bucket; ProtocolError rate_limited, with retry_after_s, beyond it."""
        if not self._admit(self._clock(), "over the control-message rate (HTTP)"):
            raise ProtocolError("rate_limited", self._rate_message(), retry_after_s=self._bucket.wait_s())

    def _admit(self, now: float, detail: str) -> bool:
        """One message against the bucket; False (counted, logged summarised) when over it."""
        self.received += 1
        if self._bucket.take(now):
            return True
        self.rate_limited += 1
        self._tally.record("rate_limited", detail, now)
        return False

    def _rate_message(self) -> str:
        limits = self._limits
        return (
            f"too many control messages: at most {limits.rate_per_s:g} a second "
            f"(bursts of {limits.burst}); messages beyond that are dropped"
        )

    def note_error(self, code: str, detail: str) -> None:
        """A problem with this peer's control traffic that has no one to answer: log it summarised."""
        self._tally.record(code, detail, self._clock())

    def reject(self, code: str, message: str, seq: int | None = None) -> None:
        """Answer `error` for one message (or one engine event about it); logged summarised."""
        self._tally.record(code, message, self._clock())
        self.send(ErrorMsg(code=code, message=message, seq=seq))

    def tick(self, now: float) -> None:
        self._tally.flush(now)

    def _on_message(self, raw: str | bytes) -> None:
        now = self._clock()
        self.last_message_at = now
        if not self._admit(now, "over the control-message rate"):
            if self._rate_reply_at is None or now - self._rate_reply_at >= self._limits.rate_limited_reply_s:
                self._rate_reply_at = now
                self.send(ErrorMsg(code="rate_limited", message=self._rate_message()))
            return
        try:
            self._dispatch(parse_client_message(raw, self._max_prompt_chars))
        except ProtocolError as exc:
            self.reject(exc.code, exc.message, exc.seq)
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the peer connection (aiortc's loop)
            self._tally.record("internal_error", repr(exc), now, level=logging.ERROR, exc_info=exc)
            self.send(ErrorMsg(code="internal_error", message="the server could not handle this message"))


def guard_sctp(transport: RTCSctpTransport, on_error: Callable[[str, str], None]) -> None:
    """Make a peer's malformed data-channel traffic harmless to its session (idempotent).

    aiortc decodes text messages as UTF-8 and asserts on channel-setup (DCEP) messages
    inside its receive loop, where any exception ends the DTLS transport and with it the
    whole session. Invalid UTF-8 text goes on as binary (the parser answers `bad_json`);
    a DCEP message that breaks aiortc is dropped and reported through on_error."""
    if getattr(transport, "_livestyle_guarded", False):
        return
    receive = transport._data_channel_receive

    async def guarded(stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == WEBRTC_STRING:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                pp_id = WEBRTC_BINARY
        try:
            await receive(stream_id, pp_id, data)
        except Exception as exc:  # noqa: BLE001 - reported to the session's summarised log
            on_error("bad_data_channel", f"data-channel message on stream {stream_id} dropped: {exc!r}"[:200])

    transport._data_channel_receive = guarded  # type: ignore[method-assign]
    transport._livestyle_guarded = True  # type: ignore[attr-defined]
