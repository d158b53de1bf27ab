"""One browser or WHIP session: an RTCPeerConnection, its tracks, its control channel and
the engine session behind them. The Session owns every task it starts and cancels
them all in aclose(). A session that never connects, or whose peer goes silent (no video
and no control messages), is closed within seconds so its slot comes back."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from pipeline.client import EngineSession, EngineUnavailable
from pipeline.messages import EngineFailed, EngineInfo, PromptApplied, SessionError
from pipeline.slots import SlotClosed
from pipeline.stats import Counter, Histogram
from signaling.control import ControlChannel, ControlLimits, guard_sctp
from signaling.protocol import (
    CHANNEL_LABEL,
    MAX_SEED,
    ClientMessage,
    CreateWatchMsg,
    ErrorMsg,
    HelloMsg,
    PingMsg,
    PongMsg,
    PromptAppliedMsg,
    ProtocolError,
    RerollMsg,
    RevokeWatchMsg,
    SeedMsg,
    SetPromptMsg,
    StatsMsg,
    ViewersMsg,
    WatchMsg,
    check_prompt,
)
from signaling.tracks import StylizedFanOut, StylizedVideoTrack, drain_and_discard, drain_video
from signaling.viewers import Audience, BadSdp, WatchLink  # noqa: F401 - BadSdp: importers of the name from here

log = logging.getLogger(__name__)


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the session id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"session={self.extra['session_id']} {msg}", kwargs  # type: ignore[index]


@dataclass
class SignalingStats:
    encode_ms: Histogram = field(default_factory=Histogram)
    sessions_created: Counter = field(default_factory=Counter)
    sessions_rejected: Counter = field(default_factory=Counter)
    frames_received: Counter = field(default_factory=Counter)
    frames_sent: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class SessionSettings:
    idle_timeout_s: float
    """Close the session when no camera frame arrived for this long."""
    stats_interval_s: float = 1.0
    max_short_side: int = 512
    """Camera frames are scaled so their short side is at most this before the engine."""
    heartbeat_timeout_s: float = 6.0
    """Close a connected session after this long with neither video nor control messages
    (the page pings every second; a WHIP publisher only sends video)."""
    connect_timeout_s: float = 8.0
    """Close a peer (page, WHIP publisher, WHEP viewer) not connected this long after its answer."""
    control: ControlLimits = field(default_factory=ControlLimits)
    """Rate limit and error logging of the control channel."""


def engine_json(info: EngineInfo, state: str) -> dict[str, Any]:
    return {"kind": info.kind, "model": info.model, "reason": info.reason, "state": state, "adapter": info.adapter}


class WatchDirectory(Protocol):
    """Where watch links live (the session registry)."""

    def create_watch(self, session: Session, *, renew: bool = False) -> WatchLink: ...

    def revoke_watch(self, session: Session) -> None: ...


SessionKind = Literal["browser", "whip"]


class Session:
    def __init__(
        self,
        session_id: str,
        pc: RTCPeerConnection,
        engine: EngineSession,
        engine_info: EngineInfo,
        settings: SessionSettings,
        stats: SignalingStats,
        on_closed: Callable[[Session], Awaitable[None]],
        *,
        kind: SessionKind = "browser",
        watch_directory: WatchDirectory | None = None,
    ) -> None:
        self.id = session_id
        self.pc = pc
        self.engine = engine
        self.log = SessionLog(log, {"session_id": session_id})
        self._info = engine_info
        self._settings = settings
        self._stats = stats
        self._on_closed = on_closed
        self.control = ControlChannel(self.log, settings.control, engine_info.max_prompt_chars, self._dispatch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_frame_at = time.monotonic()
        self._started_at = time.monotonic()
        self._connected_at: float | None = None
        self._closing: asyncio.Task[None] | None = None
        self.kind = kind
        self.fanout = StylizedFanOut(engine, stats.encode_ms, stats.frames_sent)
        # A browser gets its stylized video back; a WHIP publisher only sends (viewers watch).
        self.output: StylizedVideoTrack | None = self.fanout.subscribe() if kind == "browser" else None
        self.has_video = False
        self.watch: WatchLink | None = None
        self.viewers = Audience(
            self.fanout, self.log, lambda n: self.control.send(ViewersMsg(count=n)), settings.connect_timeout_s
        )
        self._watch_directory = watch_directory
        self._prompt_seq = 0
        # Lets the page free its slot at once when it goes away (POST with this secret).
        self.close_secret = secrets.token_urlsafe(16)

    # ---- wiring (before the answer is made) ---------------------------------------------

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and not self.has_video:
            self.has_video = True
            if self.output is not None:
                self.pc.addTrack(self.output)
            self._spawn(
                drain_video(track, self.engine.submit, self._settings.max_short_side, self._frame_seen),
                "reader",
            )
        else:
            self.log.info("ignoring extra %s track", track.kind)
            self._spawn(drain_and_discard(track), f"drain-{track.kind}")

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self.control.attached:
            self.log.info("closing unexpected data channel %r", channel.label[:40])
            channel.close()
            return
        guard_sctp(channel.transport, self.control.note_error)
        self.control.attach(channel, self._hello)

    def start(self) -> None:
        """After the answer: start the tasks that run for the session's life."""
        self._started_at = time.monotonic()
        self._spawn(self.fanout.run(), "fanout")
        self._spawn(self._forward_events(), "events")
        self._spawn(self._tick(), "stats")
        self.pc.on("connectionstatechange", self._on_connection_state)

    # ---- control channel ---------------------------------------------------------------------

    def _hello(self) -> None:
        self.control.send(HelloMsg(session_id=self.id, engine=engine_json(self._info, "ready")))

    def _dispatch(self, msg: ClientMessage) -> None:
        """A valid control message; ProtocolError becomes the client's `error` reply."""
        if isinstance(msg, PingMsg):
            self.control.send(PongMsg(t=msg.t))
        elif isinstance(msg, CreateWatchMsg):
            if self._watch_directory is None:
                raise ProtocolError("sharing_unavailable", "sharing is not enabled on this server")
            link = self._watch_directory.create_watch(self, renew=msg.renew)
            expires_in_s = round(link.expires_at - time.monotonic())
            self.control.send(WatchMsg(token=link.token, path=link.path, expires_in_s=expires_in_s))
            self.control.send(ViewersMsg(count=len(self.viewers)))
        elif isinstance(msg, RevokeWatchMsg):
            if self._watch_directory is not None:
                self._watch_directory.revoke_watch(self)
            self.control.send(WatchMsg(token=None, path=None, expires_in_s=None))
        else:
            try:
                if isinstance(msg, SetPromptMsg):
                    self._apply_prompt(msg.prompt, msg.seq)
                elif isinstance(msg, RerollMsg):
                    seed = msg.seed if msg.seed is not None else 1 + secrets.randbelow(MAX_SEED)
                    self.log.debug("reroll seq=%d seed=%d", msg.seq, seed)
                    self.engine.reseed(seed, msg.seq)
                    self.control.send(SeedMsg(seed=seed, seq=msg.seq))
                else:
                    self.log.debug("set_adapter_strength seq=%d %.2f", msg.seq, msg.value)
                    self.engine.set_adapter_strength(msg.value, msg.seq)
            except EngineUnavailable as exc:  # the engine is gone: tell the client
                raise ProtocolError("engine_failed", str(exc), msg.seq) from None

    @property
    def prompt(self) -> str:
        """The style asked for last (the viewer page shows it)."""
        return self.engine.prompt

    def set_prompt(self, prompt: str) -> int:
        """Change the style from outside the data channel (a WHIP publisher's control endpoint):
        same rate limit and checks as set_prompt messages; returns the seq given to it.
        Raises ProtocolError (rate_limited with retry_after_s, or why the prompt is refused)."""
        self.control.admit_http()
        return self._apply_prompt(check_prompt(prompt, self._info.max_prompt_chars), self._prompt_seq + 1)

    def _apply_prompt(self, prompt: str, seq: int) -> int:
        """seq: the client's (echoed as is in prompt_applied) or numbered here."""
        self._prompt_seq = max(self._prompt_seq, seq)
        self.log.debug("set_prompt seq=%d %r", seq, prompt[:80])
        self.engine.set_prompt(prompt, seq)
        return seq

    async def _forward_events(self) -> None:
        while True:
            try:
                event = await self.engine.next_event()
            except SlotClosed:
                return
            if isinstance(event, PromptApplied):
                self.control.send(PromptAppliedMsg(seq=event.seq, latency_ms=round(event.latency_ms, 1)))
            elif isinstance(event, SessionError):
                self.control.reject(event.code, event.message, event.seq)
            elif isinstance(event, EngineFailed):
                self.log.error("engine failed: %s", event.message)
                self.control.send(ErrorMsg(code="engine_failed", message=f"the engine stopped: {event.message}"))
                self.close_soon("engine failed")
                return

    async def _tick(self) -> None:
        """Once a second: stats for the page, the error-log summary and the reaper."""
        while True:
            await asyncio.sleep(self._settings.stats_interval_s)
            now = time.monotonic()
            self.control.send(StatsMsg(**self.engine.stats()))  # type: ignore[arg-type]
            self.control.tick(now)
            reason = self._reap_reason(now)
            if reason is not None:
                self.close_soon(reason)
                return

    def _reap_reason(self, now: float) -> str | None:
        """Why the peer counts as gone, or None while it is alive."""
        settings = self._settings
        if self._connected_at is None:
            if now - self._started_at > settings.connect_timeout_s:
                return f"not connected {settings.connect_timeout_s:g} s after the answer"
            return None
        heard = max(self._connected_at, self._last_frame_at, self.control.last_message_at or 0.0)
        if now - heard > settings.heartbeat_timeout_s:
            return f"no video and no control message for {now - heard:.1f} s"
        if now - max(self._connected_at, self._last_frame_at) > settings.idle_timeout_s:
            return f"no video for {now - self._last_frame_at:.0f} s"
        return None

    def _frame_seen(self) -> None:
        self._last_frame_at = time.monotonic()
        self._stats.frames_received.inc()

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        self.log.info("connection %s", state)
        if state == "connected" and self._connected_at is None:
            self._connected_at = time.monotonic()
        elif state in ("failed", "closed"):
            self.close_soon(f"connection {state}")

    # ---- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s crashed", task.get_name(), exc_info=task.exception())
            self.close_soon("internal error")

    def close_soon(self, reason: str) -> None:
        """Start closing from a callback that cannot await; idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason), name=f"{self.id}:close")

    async def aclose(self, reason: str = "closed") -> None:
        self.close_soon(reason)
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        control = self.control
        self.log.info(
            "closing (%s); %d control messages, %d rate-limited", reason, control.received, control.rate_limited
        )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.viewers.aclose()
        self.engine.close()
        if self.output is not None:
            self.output.stop()
        try:
            await self.pc.close()
        finally:
            await self._on_closed(self)
