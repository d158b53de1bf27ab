"""The asyncio-facing engine client.

Callers (the WebRTC sessions, the file stylizer, benchmarks) see only arrays and plain
messages: `EngineSession.submit(image, pts, time_base)`, `await EngineSession.recv()`,
`set_prompt`, `await next_event()`. The engine runs on its own thread behind
`EngineBridge`, built and rebuilt by `EngineSupervisor`, or in another process behind
`pipeline.remote.RemoteLink`; this module never touches threads itself. An EngineSession
outlives engine restarts: it keeps what it asked for (prompt, adapter strength) and is
re-attached to every new engine with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np

from pipeline.core import EngineCore, StepResult
from pipeline.health import EngineHealth
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
    Reseed,
    SessionError,
    SetAdapterStrength,
    SetPrompt,
    TransientFault,
)
from pipeline.runtime import RuntimeConfig
from pipeline.slots import Inbox, LatestSlot, SlotClosed
from pipeline.stats import EngineStats, RateWindow
from pipeline.supervisor import EngineSupervisor

log = logging.getLogger(__name__)

EngineState = Literal["starting", "warming_up", "ready", "restarting", "failed", "closed"]
_STATE_OF_STATUS: dict[str, EngineState] = {
    "ok": "ready",
    "degraded": "ready",
    "warming_up": "warming_up",
    "restarting": "restarting",
    "unhealthy": "failed",
}


class EngineUnavailable(Exception):
    """The engine gave up or was closed; no new work is accepted."""


class SessionClosed(Exception):
    """recv() on a session that was closed."""


@dataclass(frozen=True)
class EngineSpec:
    """What to build, known before building it (so /healthz can say it at once)."""

    info: EngineInfo
    build: Callable[[EngineStats, Callable[[str], None]], EngineCore]
    """build(stats, progress) runs on the engine thread: downloads and loads weights,
    allocates device memory, and reports human-readable detail through progress(text)
    (shown by /healthz while warming up). Called again for every rebuild."""


class Bridge(Protocol):
    """Where commands and frames go: the engine thread's EngineBridge, or a socket to an
    engine in another process (pipeline.remote)."""

    def put_frame(self, frame: FrameIn) -> bool: ...

    def send(self, cmd: Command, *, discard_frames_of: str | None = None) -> None: ...


class Link(Protocol):
    """What keeps an engine behind a bridge: the restart supervisor, or a remote link."""

    @property
    def bridge(self) -> Bridge | None: ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


LinkFactory = Callable[[EngineStats, EngineHealth, "EngineClient"], Link]


class EngineClient:
    def __init__(
        self,
        spec: EngineSpec,
        stats: EngineStats | None = None,
        *,
        runtime: RuntimeConfig | None = None,
        link: LinkFactory | None = None,
    ):
        """link: how to reach an engine that is not built here (pipeline.remote); by default
        the spec is built on an engine thread of this process, under the restart supervisor."""
        self.info = spec.info
        self.stats = stats or EngineStats()
        self.health = EngineHealth()
        self.failure: str = ""
        self._supervisor: Link
        if link is None:
            self._supervisor = EngineSupervisor(spec, self.stats, runtime or RuntimeConfig(), self.health, self)
        else:
            self._supervisor = link(self.stats, self.health, self)
        self._sessions: dict[str, EngineSession] = {}
        self._started = False
        self._ready = asyncio.Event()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._supervisor.start()
        log.info("engine %s (%s) starting: %s", self.info.kind, self.info.model, self.info.reason)

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self.health.final:
            raise EngineUnavailable(self.failure or f"engine is {self.state}")

    async def aclose(self) -> None:
        for session in list(self._sessions.values()):
            session.close()
        await self._supervisor.aclose()
        self.health.close()
        self._ready.set()

    @property
    def state(self) -> EngineState:
        if not self._started:
            return "starting"
        return "closed" if self.health.closed else _STATE_OF_STATUS[self.health.status]

    @property
    def healthy(self) -> bool:
        """False once the engine gave up or was closed (restarting still counts as healthy:
        sessions stay and resume)."""
        return not self.health.final

    @property
    def _bridge(self) -> Bridge | None:
        return self._supervisor.bridge

    # ---- sessions ---------------------------------------------------------------------

    def open_session(self, session_id: str, prompt: str, seq: int = 0) -> EngineSession:
        """seq: the prompt's seq, when a session of another process's client comes back to
        this engine with a prompt it had changed to (pipeline.host); 0 for a new one."""
        if not self.healthy or not self._started:
            raise EngineUnavailable(self.failure or f"engine is {self.state}")
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} is already open")
        session = EngineSession(self, session_id, prompt, seq)
        self._sessions[session_id] = session
        if self._bridge is not None:  # else it is attached to the engine being rebuilt
            self._bridge.send(AddSession(session_id, prompt, seq))
        return session

    def _close_session(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is not None and self._bridge is not None:
            self._bridge.send(RemoveSession(session_id), discard_frames_of=session_id)

    def _send(self, cmd: Command) -> None:
        if self._bridge is not None:
            self._bridge.send(cmd)

    # ---- SupervisedClient: called on the loop -----------------------------------------

    def attach(self, bridge: Bridge) -> None:
        for session in self._sessions.values():
            for cmd in session._attach_commands():
                bridge.send(cmd)

    def ready(self) -> None:
        self._ready.set()

    def deliver(self, result: StepResult) -> None:
        for frame in result.outputs:
            session = self._sessions.get(frame.session_id)
            if session is not None:
                session._out.put(frame)
        for event in result.events:
            if isinstance(event, TransientFault):
                self.health.transient(event.message)
            elif isinstance(event, EngineFailed):
                self.gave_up(event.message)
            elif (session := self._sessions.get(event.session_id)) is not None:
                session._on_event(event)

    def restarting(self, reason: str) -> None:
        for session in self._sessions.values():
            session._events.put(SessionError(session.session_id, "engine_restarting", reason))

    def gave_up(self, reason: str) -> None:
        self.failure = reason
        for session in list(self._sessions.values()):
            session._on_engine_failed(EngineFailed(reason))
        self._ready.set()


class EngineSession:
    """One stream's view of the engine. Use from the event loop only."""

    def __init__(self, client: EngineClient, session_id: str, prompt: str, seq: int = 0) -> None:
        self.session_id = session_id
        self._client = client
        self._out: LatestSlot[FrameOut] = LatestSlot()
        self._events: Inbox[Event] = Inbox()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_in = 0
        self._fps_in = RateWindow()
        self._fps_out = RateWindow()
        # What a rebuilt engine must be told: the prompt frames are made with, a newer one
        # not yet confirmed (applied or refused), and the adapter strength asked for.
        self._applied: tuple[str, int] = (prompt, seq)
        self._requested: SetPrompt | None = None
        self._adapter: SetAdapterStrength | None = None
        self._seed: Reseed | None = None
        self._closed = False

    @property
    def prompt(self) -> str:
        """The style asked for last: a newer prompt not yet confirmed, else the one frames
        are made with ("" once the initial prompt was refused)."""
        return self._requested.prompt if self._requested is not None else self._applied[0]

    def submit(self, image: np.ndarray, pts: int, time_base: Fraction, t_in: float | None = None) -> None:
        """Hand the newest camera frame to the engine; never blocks. t_in: when the frame
        arrived (time.monotonic(), by default now; a media process passes its own)."""
        if self._out.closed:
            return
        now = time.monotonic() if t_in is None else t_in
        self.frames_in += 1
        self._fps_in.add(now)
        self._client.stats.frames_in.inc()
        bridge = self._client._bridge
        if bridge is None or bridge.put_frame(FrameIn(self.session_id, image, pts, time_base, now)):
            self.dropped_in += 1  # overwritten in its slot, or no engine while one is rebuilt
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

    def _check_open(self) -> None:
        if self._out.closed or not self._client.healthy:
            raise EngineUnavailable(self._client.failure or "engine is not running")

    def set_prompt(self, prompt: str, seq: int) -> None:
        self._check_open()
        self._requested = SetPrompt(self.session_id, prompt, seq, time.monotonic())
        self._client._send(self._requested)

    def set_adapter_strength(self, value: float, seq: int) -> None:
        self._check_open()
        self._adapter = SetAdapterStrength(self.session_id, value, seq)
        self._client._send(self._adapter)

    def reseed(self, seed: int, seq: int) -> None:
        """New fixed noise for this session (a "reroll"); kept for a rebuilt engine too."""
        self._check_open()
        self._seed = Reseed(self.session_id, seed, seq)
        self._client._send(self._seed)

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
        # Not keyed on the output slot: an engine that gave up closes that slot first, and
        # the owner's close must still take the session out of the client's table.
        if self._closed:
            return
        self._closed = True
        if not self._out.closed:
            self._out.close()
        self._events.close()
        self._client._close_session(self.session_id)

    # ---- from the client ----------------------------------------------------------------

    def _attach_commands(self) -> list[Command]:
        prompt, seq = self._applied
        commands: list[Command] = [AddSession(self.session_id, prompt, seq)]
        commands += [c for c in (self._requested, self._adapter, self._seed) if c is not None]
        return commands

    def _on_event(self, event: Event) -> None:
        requested = self._requested
        if isinstance(event, PromptApplied) and requested is not None and event.seq >= requested.seq:
            self._applied, self._requested = (requested.prompt, requested.seq), None
        elif isinstance(event, SessionError):
            about_prompt = event.code.startswith("prompt") or event.code == "session_failed"
            if event.seq is None and event.code == "prompt_invalid":
                self._applied = ("", self._applied[1])  # the initial prompt was refused
            elif about_prompt and requested is not None and event.seq == requested.seq:
                self._requested = None
            about_adapter = event.code in ("adapter_unavailable", "session_failed")
            if about_adapter and self._adapter is not None and event.seq == self._adapter.seq:
                self._adapter = None
            if event.seq is None and event.code == "session_failed":
                self._out.close(EngineUnavailable(event.message))  # the engine could not open it
        self._events.put(event)

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
