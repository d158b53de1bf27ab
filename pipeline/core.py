"""The synchronous engine core: session bookkeeping and step scheduling around a
stylizing backend.

`EngineCore` is stepped by exactly one thread (see bridge.py) or directly by a test, with
the clock it is given. It never blocks on anything but compute, knows nothing about
threads or asyncio, and sorts failures into three kinds: a `SessionError` that concerns
one session (a bad frame, a refused prompt, a backend call for that session that raised);
a transient fault the backend recovered from (`Backend.recover`: the frames of the steps
in flight are dropped and a `TransientFault` event says so); and an `EngineFatalError`
(the engine must be rebuilt).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.backend import AdapterUnavailable, Backend, EngineFatalError, PromptRejected
from pipeline.messages import (
    AddSession,
    Command,
    EngineInfo,
    Event,
    FrameIn,
    FrameOut,
    RemoveSession,
    Reseed,
    SessionError,
    SetAdapterStrength,
    SetPrompt,
    TransientFault,
)
from pipeline.runtime import RuntimeConfig
from pipeline.scheduler import Arrival, Decision, Scheduler
from pipeline.session_state import SessionTable
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)

MAX_FRAME_SIDE = 4096
MIN_FRAME_SIDE = 16
MAX_TRANSIENT_IN_A_ROW = 5
"""Transient faults without a good step in between before the engine counts as broken."""


class _Transient(Exception):
    """A backend error that backend.recover() cleaned up after."""


@dataclass
class _Inflight:
    frames: list[FrameIn]
    prompt_seqs: list[int]
    ticket: Any
    t_launch: float
    host_s: float
    """Time submit() took."""
    bucket: int
    expected_done: float
    behind: bool
    """Launched while another step was in flight."""


@dataclass
class StepResult:
    outputs: list[FrameOut] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def extend(self, other: StepResult) -> None:
        self.outputs += other.outputs
        self.events += other.events


class EngineCore:
    """Session-aware wrapper that the bridge steps. One step = one batch."""

    def __init__(
        self,
        backend: Backend,
        stats: EngineStats | None = None,
        *,
        runtime: RuntimeConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        runtime = runtime or RuntimeConfig()
        self.backend = backend
        self.stats = stats or EngineStats()
        self.clock = clock
        self.sessions = SessionTable(backend, runtime.text_budget)
        bucket_for: Callable[[int], int] = getattr(backend, "bucket_for", lambda rows: rows)
        self.scheduler = Scheduler(runtime.schedule, self.max_batch, bucket_for, backend.pipelined)
        self._inflight: deque[_Inflight] = deque()
        self._last_collected: float | None = None
        self._faults_in_a_row = 0

    def configure(self, runtime: RuntimeConfig) -> None:
        """Apply the scheduling settings (the engine client does this after building)."""
        self.scheduler.policy = runtime.schedule
        self.sessions.text_budget = runtime.text_budget

    @property
    def info(self) -> EngineInfo:
        return self.backend.info

    @property
    def max_batch(self) -> int:
        return self.backend.info.max_batch

    @property
    def session_ids(self) -> list[str]:
        return self.sessions.ids

    @property
    def has_inflight(self) -> bool:
        return bool(self._inflight)

    def warmup(self, progress: Callable[[str], None] = lambda _msg: None) -> None:
        self.backend.warmup(progress)

    # ---- commands -------------------------------------------------------------------------

    def execute(self, cmd: Command) -> list[Event]:
        if isinstance(cmd, AddSession):
            return self.sessions.add(cmd)
        if isinstance(cmd, RemoveSession):
            self.sessions.remove(cmd.session_id)
            return []
        if isinstance(cmd, SetPrompt):
            return self.sessions.set_prompt(cmd)
        if isinstance(cmd, SetAdapterStrength):
            return self.sessions.set_adapter_strength(cmd)
        if isinstance(cmd, Reseed):
            return self.sessions.reseed(cmd)
        raise TypeError(f"unknown engine command {type(cmd).__name__}")

    # ---- stepping -------------------------------------------------------------------------

    def plan(self, waiting: Sequence[FrameIn], arrivals: Mapping[str, Arrival]) -> Decision:
        """What the engine thread should do next, given the frames waiting in the slots."""
        admitted = self.sessions.admit(waiting)
        return self.scheduler.decide(self.clock(), admitted, [i.expected_done for i in self._inflight], arrivals)

    def launch(self, frames: Sequence[FrameIn], *, one_per_session: bool = True) -> StepResult:
        """Submit the frames as one batch (at most one per session unless one_per_session
        is False: clip mode, B consecutive frames of one stream). A synchronous backend's
        batch is finished here; a pipelined one's stays in flight until collect()."""
        result = StepResult()
        batch: list[FrameIn] = []
        seen: set[str] = set()
        for frame in self.sessions.admit(frames):
            if one_per_session and frame.session_id in seen:
                continue  # a caller bug: never two per session
            problem = _frame_problem(frame.image)
            if problem:
                result.events.append(SessionError(frame.session_id, "bad_frame", problem))
                continue
            seen.add(frame.session_id)
            batch.append(frame)
        if len(batch) > self.max_batch:
            raise ValueError(f"step got {len(batch)} frames; max_batch is {self.max_batch}")
        if not batch:
            return result
        seqs, events = self.sessions.begin_step(batch)
        result.events += events
        behind = self._inflight[-1].expected_done if self._inflight else None
        t0 = self.clock()
        try:
            ticket = self._call(self.backend.submit, batch)
        except _Transient as exc:
            result.extend(self._drop_inflight(exc, batch))
            return result
        bucket = self.scheduler.bucket_for(len(batch))
        expected = self.scheduler.expected_done(t0, bucket, behind)
        self._inflight.append(
            _Inflight(batch, seqs, ticket, t0, self.clock() - t0, bucket, expected, behind is not None)
        )
        if not self.backend.pipelined:
            result.extend(self.collect())
        return result

    def collect(self) -> StepResult:
        """Wait for the oldest step in flight, if any."""
        if not self._inflight:
            return StepResult()
        done = self._inflight.popleft()
        try:
            images = self._call(self.backend.collect, done.ticket)
        except _Transient as exc:
            return self._drop_inflight(exc, done.frames)
        self._faults_in_a_row = 0
        return self._finish(done, images)

    def step(self, frames: Sequence[FrameIn], *, one_per_session: bool = True) -> StepResult:
        """Launch the frames and return what finished: this batch for a synchronous
        backend, the previous one for a pipelined backend (clip mode and tests)."""
        result = self.launch(frames, one_per_session=one_per_session)
        while len(self._inflight) > 1:
            result.extend(self.collect())
        return result

    def flush(self) -> StepResult:
        """Wait for every batch in flight."""
        result = StepResult()
        while self._inflight:
            result.extend(self.collect())
        return result

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            recover = getattr(self.backend, "recover", None)
            try:
                recovered = bool(recover(exc)) if recover is not None else False
            except Exception as again:  # noqa: BLE001 - a failed recovery makes it fatal
                raise EngineFatalError(f"{type(exc).__name__}: {exc} (and recovering failed: {again})") from exc
            if not recovered:
                raise EngineFatalError(f"{type(exc).__name__}: {exc}") from exc
            self._faults_in_a_row += 1
            if self._faults_in_a_row > MAX_TRANSIENT_IN_A_ROW:
                raise EngineFatalError(
                    f"{self._faults_in_a_row} transient errors in a row, the last: {type(exc).__name__}: {exc}"
                ) from exc
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _drop_inflight(self, exc: _Transient, frames: list[FrameIn]) -> StepResult:
        """The backend dropped its in-flight state: so do we, and say how much was lost."""
        lost = len(frames) + sum(len(i.frames) for i in self._inflight)
        self._inflight.clear()
        self.stats.transient_faults.inc()
        self.stats.frames_lost.inc(lost)
        log.warning("engine recovered from %s; %d frames dropped", exc, lost)
        return StepResult(events=[TransientFault(str(exc), lost)])

    def _finish(self, done: _Inflight, images: list[np.ndarray]) -> StepResult:
        t_out = self.clock()
        if len(images) != len(done.frames):
            raise EngineFatalError(f"backend returned {len(images)} images for {len(done.frames)} frames")
        serial = None if done.behind else t_out - done.t_launch
        chained = None
        if done.behind and self._last_collected is not None:
            # Device time from when it could start (the later of its launch and the end of the
            # step ahead) to its end: idle time the scheduler chose must not count as cost,
            # or waiting longer would make steps look dearer and it would wait longer still.
            chained = t_out - max(done.t_launch, self._last_collected)
        self.scheduler.costs.observe(done.bucket, serial=serial, chained=chained, host=done.host_s)
        self._last_collected = t_out
        if self._inflight:  # the step behind starts from this one's real end, not its estimate
            nxt = self._inflight[0]
            nxt.expected_done = self.scheduler.expected_done(nxt.t_launch, nxt.bucket, t_out if nxt.behind else None)
        self.stats.steps.inc()
        if done.behind:
            self.stats.steps_overlapped.inc()
        self.stats.step_ms.observe((t_out - done.t_launch) * 1000)
        self.stats.batch_size.observe(len(done.frames))
        result = StepResult()
        for frame, seq, image in zip(done.frames, done.prompt_seqs, images, strict=True):
            result.outputs.append(
                FrameOut(
                    session_id=frame.session_id,
                    image=image,
                    pts=frame.pts,
                    time_base=frame.time_base,
                    t_in=frame.t_in,
                    t_out=t_out,
                    prompt_seq=seq,
                )
            )
            self.stats.frame_latency_ms.observe((t_out - frame.t_in) * 1000)
            applied = self.sessions.applied(frame.session_id, seq, t_out)
            if applied is not None:
                self.stats.prompt_apply_ms.observe(applied.latency_ms)
                result.events.append(applied)
        self.stats.frames_out.inc(len(done.frames))
        return result

    def close(self) -> None:
        self.sessions.close_all()
        self.backend.close()


def _frame_problem(image: object) -> str | None:
    if not isinstance(image, np.ndarray):
        return f"frame must be a numpy array, got {type(image).__name__}"
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return f"frame must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}"
    h, w = image.shape[:2]
    if not (MIN_FRAME_SIDE <= h <= MAX_FRAME_SIDE and MIN_FRAME_SIDE <= w <= MAX_FRAME_SIDE):
        return f"frame size {w}x{h} is outside {MIN_FRAME_SIDE}..{MAX_FRAME_SIDE} pixels per side"
    return None


__all__ = [
    "AdapterUnavailable",
    "Backend",
    "EngineCore",
    "EngineFatalError",
    "PromptRejected",
    "StepResult",
]
