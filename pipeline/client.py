"""The asyncio-facing engine client.

Callers (the WebRTC sessions, the file stylizer, benchmarks) see only arrays and plain
messages: `EngineSession.submit(image, pts, time_base)`, `await EngineSession.recv()`,
`set_prompt`, `await next_event()`. The engine runs on its own thread behind
`EngineBridge`; this module never touches threads itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.bridge import EngineBridge, EngineState
from pipeline.core import EngineCore, StepResult
from pipeline.messages import (
    AddSession,
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
from pipeline.slots import Inbox, LatestSlot, SlotClosed
from pipeline.stats import EngineStats, RateWindow

log = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """The engine failed or was closed; no new work is accepted."""


class SessionClosed(Exception):
    """recv() on a session that was closed."""


@dataclass(frozen=True)
class EngineSpec:
    """What to build, known before building it (so /healthz can say it at once)."""

    info: EngineInfo
    build: Callable[[EngineStats], EngineCore]
    """Runs on the engine thread: loads weights, allocates device memory."""


class EngineClient:
    def __init__(self, spec: EngineSpec, stats: EngineStats | None = None) -> None:
        self.info = spec.info
        self.stats = stats or EngineStats()
        self.state: EngineState = "starting"
        self.failure: str = ""
        self._spec = spec
        self._sessions: dict[str, EngineSession] = {}
        self._bridge: EngineBridge | None = None
        self._ready = asyncio.Event()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._bridge = EngineBridge(lambda: self._spec.build(self.stats), loop, self._deliver, self._set_state)
        self._bridge.start()
        log.info("engine %s (%s) starting: %s", self.info.kind, self.info.model, self.info.reason)

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self.state != "ready":
            raise EngineUnavailable(self.failure or f"engine is {self.state}")

    async def aclose(self) -> None:
        for session in list(self._sessions.values()):
            session.close()
        if self._bridge is not None:
            bridge, self._bridge = self._bridge, None
            # join() blocks: do it off the loop so shutdown never stalls other tasks.
            if not await asyncio.to_thread(bridge.stop):
                log.warning("engine thread did not stop within its timeout")
        if self.state != "failed":
            self._set_state("closed", "")

    @property
    def healthy(self) -> bool:
        return self.state in ("starting", "warming_up", "ready")

    # ---- sessions ---------------------------------------------------------------------

    def open_session(self, session_id: str, prompt: str) -> EngineSession:
        if not self.healthy or self._bridge is None:
            raise EngineUnavailable(self.failure or f"engine is {self.state}")
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} is already open")
        session = EngineSession(self, session_id)
        self._sessions[session_id] = session
        self._bridge.send(AddSession(session_id, prompt))
        return session

    def _close_session(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is not None and self._bridge is not None:
            self._bridge.send(RemoveSession(session_id), discard_frames_of=session_id)

    # ---- called on the loop by the bridge ---------------------------------------------

    def _set_state(self, state: EngineState, detail: str) -> None:
        self.state = state
        if state == "failed":
            self.failure = detail
        if state in ("ready", "failed", "closed"):
            self._ready.set()
        log.info("engine state: %s%s", state, f" ({detail})" if detail else "")

    def _deliver(self, result: StepResult) -> None:
        for frame in result.outputs:
            session = self._sessions.get(frame.session_id)
            if session is not None:
                session._on_output(frame)
        for event in result.events:
            if isinstance(event, EngineFailed):
                self.failure = event.message
                for session in list(self._sessions.values()):
                    session._on_engine_failed(event)
                continue
            session = self._sessions.get(event.session_id)
            if session is not None:
                session._events.put(event)


class EngineSession:
    """One stream's view of the engine. Use from the event loop only."""

    def __init__(self, client: EngineClient, session_id: str) -> None:
        self.session_id = session_id
        self._client = client
        self._out: LatestSlot[FrameOut] = LatestSlot()
        self._events: Inbox[Event] = Inbox()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_in = 0
        self._fps_in = RateWindow()
        self._fps_out = RateWindow()

    def submit(self, image: np.ndarray, pts: int, time_base: Fraction) -> None:
        """Hand the newest camera frame to the engine; never blocks."""
        bridge = self._client._bridge
        if self._out.closed or bridge is None:
            return
        now = time.monotonic()
        self.frames_in += 1
        self._fps_in.add(now)
        self._client.stats.frames_in.inc()
        if bridge.put_frame(FrameIn(self.session_id, image, pts, time_base, now)):
            self.dropped_in += 1
            self._client.stats.frames_dropped.inc()

    async def recv(self) -> FrameOut:
        """The next stylized frame (the newest one if several finished meanwhile)."""
        try:
            frame = await self._out.get()
        except SlotClosed as exc:
            if isinstance(exc.__cause__, EngineUnavailable):
                raise exc.__cause__ from None
            raise SessionClosed(self.session_id) from None
        now = time.monotonic()
        self.frames_out += 1
        self._fps_out.add(now, (now - frame.t_in) * 1000)
        return frame

    def set_prompt(self, prompt: str, seq: int) -> None:
        bridge = self._client._bridge
        if bridge is None or self._out.closed:
            raise EngineUnavailable(self._client.failure or "engine is not running")
        bridge.send(SetPrompt(self.session_id, prompt, seq, time.monotonic()))

    def set_adapter_strength(self, value: float, seq: int) -> None:
        bridge = self._client._bridge
        if bridge is None or self._out.closed:
            raise EngineUnavailable(self._client.failure or "engine is not running")
        bridge.send(SetAdapterStrength(self.session_id, value, seq))

    async def next_event(self) -> Event:
        """PromptApplied / SessionError / EngineFailed, in order. Raises SlotClosed
        after close()."""
        return await self._events.get()

    def stats(self) -> dict[str, float | int | None]:
        now = time.monotonic()
        latency = self._fps_out.median(now)
        return {
            "fps_in": round(self._fps_in.rate(now), 1),
            "fps_out": round(self._fps_out.rate(now), 1),
            "dropped": self.dropped_in + self._out.drops,
            "latency_ms": None if latency is None else round(latency, 1),
        }

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()
            self._events.close()
            self._client._close_session(self.session_id)

    # ---- from the client's delivery -----------------------------------------------------

    def _on_output(self, frame: FrameOut) -> None:
        self._out.put(frame)

    def _on_engine_failed(self, event: EngineFailed) -> None:
        self._events.put(event)
        self._out.close(EngineUnavailable(event.message))


__all__ = [
    "EngineClient",
    "EngineSession",
    "EngineSpec",
    "EngineUnavailable",
    "PromptApplied",
    "SessionClosed",
    "SessionError",
]
