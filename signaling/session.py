"""One browser session: an RTCPeerConnection, its tracks, its control channel and
the engine session behind them. The Session owns every task it starts and cancels
them all in aclose()."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from pipeline.client import EngineSession, EngineUnavailable
from pipeline.messages import EngineFailed, EngineInfo, PromptApplied, SessionError
from pipeline.slots import SlotClosed
from pipeline.stats import Counter, Histogram
from signaling.protocol import (
    CHANNEL_LABEL,
    CreateWatchMsg,
    ErrorMsg,
    HelloMsg,
    PingMsg,
    PongMsg,
    PromptAppliedMsg,
    ProtocolError,
    RevokeWatchMsg,
    ServerMessage,
    SetAdapterStrengthMsg,
    SetPromptMsg,
    StatsMsg,
    ViewersMsg,
    WatchMsg,
    encode_server_message,
    parse_client_message,
)
from signaling.tracks import StylizedFanOut, StylizedVideoTrack, drain_and_discard, drain_video
from signaling.viewers import Viewer, ViewersFull, WatchLink

log = logging.getLogger(__name__)


class BadSdp(ValueError):
    """An SDP offer that cannot be used; the message says why, for the client."""


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


def engine_json(info: EngineInfo, state: str) -> dict[str, Any]:
    return {"kind": info.kind, "model": info.model, "reason": info.reason, "state": state, "adapter": info.adapter}


class WatchDirectory(Protocol):
    """Where watch links live (the session registry)."""

    def create_watch(self, session: Session) -> WatchLink: ...

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
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_frame_at = time.monotonic()
        self._closing: asyncio.Task[None] | None = None
        self.kind = kind
        self.fanout = StylizedFanOut(engine, stats.encode_ms, stats.frames_sent)
        # A browser gets its stylized video back; a WHIP publisher only sends (viewers watch).
        self.output: StylizedVideoTrack | None = self.fanout.subscribe() if kind == "browser" else None
        self.has_video = False
        self.watch: WatchLink | None = None
        self.viewers: dict[str, Viewer] = {}
        self._watch_directory = watch_directory
        self._prompt_seq = 0

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
        if channel.label != CHANNEL_LABEL or self._channel is not None:
            self.log.info("closing unexpected data channel %r", channel.label)
            channel.close()
            return
        self._channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._hello()
        else:
            channel.on("open", self._hello)

    def start(self) -> None:
        """After the answer: start the tasks that run for the session's life."""
        self._spawn(self.fanout.run(), "fanout")
        self._spawn(self._forward_events(), "events")
        self._spawn(self._tick(), "stats")
        self.pc.on("connectionstatechange", self._on_connection_state)

    # ---- control channel ---------------------------------------------------------------------

    def _send(self, msg: ServerMessage) -> None:
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            ch.send(encode_server_message(msg))

    def _hello(self) -> None:
        self._send(HelloMsg(session_id=self.id, engine=engine_json(self._info, "ready")))

    def _on_message(self, raw: str | bytes) -> None:
        try:
            msg = parse_client_message(raw, self._info.max_prompt_chars)
        except ProtocolError as exc:
            self.log.info("rejected control message: %s (%s)", exc.code, exc.message)
            self._send(ErrorMsg(code=exc.code, message=exc.message, seq=exc.seq))
            return
        if isinstance(msg, PingMsg):
            self._send(PongMsg(t=msg.t))
        elif isinstance(msg, CreateWatchMsg):
            if self._watch_directory is None:
                self._send(ErrorMsg(code="sharing_unavailable", message="sharing is not enabled on this server"))
                return
            link = self._watch_directory.create_watch(self)
            self._send(
                WatchMsg(token=link.token, path=link.path, expires_in_s=round(link.expires_at - time.monotonic()))
            )
            self._send(ViewersMsg(count=len(self.viewers)))
        elif isinstance(msg, RevokeWatchMsg):
            if self._watch_directory is not None:
                self._watch_directory.revoke_watch(self)
            self._send(WatchMsg(token=None, path=None, expires_in_s=None))
        elif isinstance(msg, SetAdapterStrengthMsg | SetPromptMsg):
            try:
                if isinstance(msg, SetPromptMsg):
                    self.set_prompt(msg.prompt, msg.seq)
                else:
                    self.log.info("set_adapter_strength seq=%d %.2f", msg.seq, msg.value)
                    self.engine.set_adapter_strength(msg.value, msg.seq)
            except EngineUnavailable as exc:  # the engine is gone: tell the client
                self._send(ErrorMsg(code="engine_failed", message=str(exc), seq=msg.seq))

    def set_prompt(self, prompt: str, seq: int | None = None) -> int:
        """Change the style: with the client's seq (data channel; echoed as is in
        prompt_applied), or numbered here (a WHIP publisher's control endpoint)."""
        if seq is None:
            seq = self._prompt_seq + 1
        self._prompt_seq = max(self._prompt_seq, seq)
        self.log.info("set_prompt seq=%d %r", seq, prompt[:80])
        self.engine.set_prompt(prompt, seq)
        return seq

    # ---- viewers (watch links) ---------------------------------------------------------------

    async def add_viewer(self, offer_sdp: str, rtc_config: RTCConfiguration, max_viewers: int) -> tuple[Viewer, str]:
        """A receive-only peer for a viewer; returns it and the answer SDP."""
        if len(self.viewers) >= max_viewers:
            raise ViewersFull(max_viewers)
        pc = RTCPeerConnection(rtc_config)
        viewer = Viewer(secrets.token_urlsafe(9), pc, self.fanout.subscribe(), self._viewer_closed)
        self.viewers[viewer.id] = viewer
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise BadSdp("the offer has no video to receive")
            pc.addTrack(viewer.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadSdp:
            await viewer.aclose()
            raise
        except Exception as exc:
            await viewer.aclose()
            raise BadSdp(f"the offer could not be parsed: {exc}") from exc

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                viewer.close_soon()

        self.log.info("viewer %s joined (%d watching)", viewer.id, len(self.viewers))
        self._send(ViewersMsg(count=len(self.viewers)))
        return viewer, pc.localDescription.sdp

    async def _viewer_closed(self, viewer: Viewer) -> None:
        if self.viewers.pop(viewer.id, None) is not None:
            self.fanout.unsubscribe(viewer.track)
            self.log.info("viewer %s left (%d watching)", viewer.id, len(self.viewers))
            self._send(ViewersMsg(count=len(self.viewers)))

    def disconnect_viewers(self) -> None:
        """Close every viewer (a revoked link) from code that cannot await."""
        if self.viewers:
            self._spawn(self.close_viewers(), "close-viewers")

    async def close_viewers(self) -> None:
        await asyncio.gather(*(v.aclose() for v in list(self.viewers.values())), return_exceptions=True)

    async def _forward_events(self) -> None:
        while True:
            try:
                event = await self.engine.next_event()
            except SlotClosed:
                return
            if isinstance(event, PromptApplied):
                self._send(PromptAppliedMsg(seq=event.seq, latency_ms=round(event.latency_ms, 1)))
            elif isinstance(event, SessionError):
                self.log.info("engine error %s: %s", event.code, event.message)
                self._send(ErrorMsg(code=event.code, message=event.message, seq=event.seq))
            elif isinstance(event, EngineFailed):
                self.log.error("engine failed: %s", event.message)
                self._send(ErrorMsg(code="engine_failed", message=f"the engine stopped: {event.message}"))
                self.close_soon("engine failed")
                return

    async def _tick(self) -> None:
        """Stats once a second; closes the session when the camera went quiet."""
        while True:
            await asyncio.sleep(self._settings.stats_interval_s)
            self._send(StatsMsg(**self.engine.stats()))  # type: ignore[arg-type]
            idle = time.monotonic() - self._last_frame_at
            if idle > self._settings.idle_timeout_s:
                self.log.info("no video for %.0f s: closing", idle)
                self.close_soon("idle")
                return

    def _frame_seen(self) -> None:
        self._last_frame_at = time.monotonic()
        self._stats.frames_received.inc()

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        self.log.info("connection %s", state)
        if state in ("failed", "closed"):
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
        self.log.info("closing (%s)", reason)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_viewers()
        self.engine.close()
        if self.output is not None:
            self.output.stop()
        try:
            await self.pc.close()
        finally:
            await self._on_closed(self)
