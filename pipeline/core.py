"""The synchronous engine core: session bookkeeping around a stylizing backend.

`EngineCore` is stepped by exactly one thread (see bridge.py) or directly by a test.
It never blocks on anything but compute, knows nothing about threads or asyncio,
and turns backend failures into either a per-session `SessionError` (recoverable)
or an `EngineFatalError` (the engine is dead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.messages import (
    AddSession,
    Command,
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
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)

MAX_FRAME_SIDE = 4096
MIN_FRAME_SIDE = 16


class PromptRejected(Exception):
    """The backend cannot use this prompt (too long for its token budget, empty...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdapterUnavailable(Exception):
    """The engine runs without a temporal adapter (start it with --lllite PATH)."""


class EngineFatalError(RuntimeError):
    """The backend failed in a way that leaves the engine unusable."""


class Backend(Protocol):
    """A model that stylizes batches of frames. It owns per-session model state
    (cached prompt embeddings, noise, previous output) but no bookkeeping.

    Work is split into submit (launch) and collect (wait for the result). A `pipelined`
    backend may have one batch in flight while the next is submitted (GPU work of step n
    overlaps the launch of step n+1); a synchronous one does everything in submit."""

    info: EngineInfo
    pipelined: bool

    def warmup(self, progress: Callable[[str], None]) -> None: ...

    def check_prompt(self, prompt: str) -> None:
        """Raise PromptRejected if the prompt cannot be used."""

    def open_session(self, session_id: str, prompt: str) -> None: ...

    def close_session(self, session_id: str) -> None: ...

    def set_prompt(self, session_id: str, prompt: str) -> None: ...

    def set_adapter_strength(self, session_id: str, value: float) -> None:
        """Raise AdapterUnavailable when the backend has no temporal adapter."""

    def submit(self, frames: Sequence[FrameIn]) -> Any:
        """Start stylizing; returns a ticket for collect(). Frames may share a session
        (clip mode) only when the caller allows it."""

    def collect(self, ticket: Any) -> list[np.ndarray]:
        """One output image per submitted frame, in order (blocks until ready)."""

    def close(self) -> None: ...


@dataclass
class _SessionState:
    prompt_seq: int = 0
    pending_applied: tuple[int, float] | None = None
    """(seq, t_received) of a prompt not yet seen in an output frame."""


@dataclass
class _Inflight:
    frames: list[FrameIn]
    prompt_seqs: list[int]
    ticket: Any
    t_submit: float


@dataclass
class StepResult:
    outputs: list[FrameOut] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class EngineCore:
    """Session-aware wrapper that the bridge steps. One step = one batch."""

    def __init__(self, backend: Backend, stats: EngineStats | None = None) -> None:
        self.backend = backend
        self.stats = stats or EngineStats()
        self._sessions: dict[str, _SessionState] = {}
        self._inflight: _Inflight | None = None

    @property
    def info(self) -> EngineInfo:
        return self.backend.info

    @property
    def max_batch(self) -> int:
        return self.backend.info.max_batch

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def warmup(self, progress: Callable[[str], None] = lambda _msg: None) -> None:
        self.backend.warmup(progress)

    # ---- commands -----------------------------------------------------------------

    def execute(self, cmd: Command) -> list[Event]:
        if isinstance(cmd, AddSession):
            return self._add(cmd)
        if isinstance(cmd, RemoveSession):
            if self._sessions.pop(cmd.session_id, None) is not None:
                self.backend.close_session(cmd.session_id)
            return []
        if isinstance(cmd, SetPrompt):
            return self._set_prompt(cmd)
        if isinstance(cmd, SetAdapterStrength):
            if cmd.session_id not in self._sessions:
                return [SessionError(cmd.session_id, "unknown_session", "session is not open", cmd.seq)]
            try:
                self.backend.set_adapter_strength(cmd.session_id, cmd.value)
            except AdapterUnavailable as exc:
                return [SessionError(cmd.session_id, "adapter_unavailable", str(exc), cmd.seq)]
            return []
        raise TypeError(f"unknown engine command {type(cmd).__name__}")

    def _add(self, cmd: AddSession) -> list[Event]:
        if cmd.session_id in self._sessions:
            return []
        events: list[Event] = []
        prompt = cmd.prompt
        try:
            self.backend.check_prompt(prompt)
        except PromptRejected as exc:
            # Start with an empty edit instead of refusing the whole session.
            events.append(SessionError(cmd.session_id, "prompt_invalid", exc.message))
            prompt = ""
        self.backend.open_session(cmd.session_id, prompt)
        self._sessions[cmd.session_id] = _SessionState()
        return events

    def _set_prompt(self, cmd: SetPrompt) -> list[Event]:
        state = self._sessions.get(cmd.session_id)
        if state is None:
            return [SessionError(cmd.session_id, "unknown_session", "session is not open", cmd.seq)]
        try:
            self.backend.check_prompt(cmd.prompt)
        except PromptRejected as exc:
            code = "prompt_too_long" if exc.code == "prompt_too_long" else "prompt_invalid"
            return [SessionError(cmd.session_id, code, exc.message, cmd.seq)]  # type: ignore[arg-type]
        self.backend.set_prompt(cmd.session_id, cmd.prompt)
        state.prompt_seq = cmd.seq
        state.pending_applied = (cmd.seq, cmd.t_received)
        return []

    # ---- stepping -----------------------------------------------------------------

    @property
    def has_inflight(self) -> bool:
        return self._inflight is not None

    def step(self, frames: Sequence[FrameIn], *, one_per_session: bool = True) -> StepResult:
        """Submit the frames as one batch (at most one per session unless one_per_session
        is False: clip mode, B consecutive frames of one stream) and return what finished:
        this batch for a synchronous backend, the previous one for a pipelined backend."""
        result = StepResult()
        batch: list[FrameIn] = []
        seen: set[str] = set()
        for frame in frames:
            if frame.session_id not in self._sessions or (one_per_session and frame.session_id in seen):
                continue  # removed meanwhile, or a caller bug: never two per session
            problem = _frame_problem(frame.image)
            if problem:
                result.events.append(SessionError(frame.session_id, "bad_frame", problem))
                continue
            seen.add(frame.session_id)
            batch.append(frame)
        if len(batch) > self.max_batch:
            raise ValueError(f"step got {len(batch)} frames; max_batch is {self.max_batch}")

        launched = None
        if batch:
            seqs = [self._sessions[f.session_id].prompt_seq for f in batch]
            t0 = time.monotonic()
            launched = _Inflight(batch, seqs, self._guard(self.backend.submit, batch), t0)
        ready = [self._inflight] if self._inflight is not None else []
        self._inflight = None
        if launched is not None:
            if self.backend.pipelined:
                self._inflight = launched
            else:
                ready.append(launched)
        for done in ready:
            self._finish(done, result)
        return result

    def flush(self) -> StepResult:
        """Wait for the batch in flight, if any."""
        result = StepResult()
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            self._finish(done, result)
        return result

    @staticmethod
    def _guard(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise EngineFatalError(f"{type(exc).__name__}: {exc}") from exc

    def _finish(self, done: _Inflight, result: StepResult) -> None:
        images = self._guard(self.backend.collect, done.ticket)
        t_out = time.monotonic()
        if len(images) != len(done.frames):
            raise EngineFatalError(f"backend returned {len(images)} images for {len(done.frames)} frames")
        self.stats.steps.inc()
        self.stats.step_ms.observe((t_out - done.t_submit) * 1000)
        self.stats.batch_size.observe(len(done.frames))
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
            state = self._sessions.get(frame.session_id)
            if state is not None and state.pending_applied is not None and seq >= state.pending_applied[0]:
                pending_seq, t_received = state.pending_applied
                state.pending_applied = None
                latency_ms = (t_out - t_received) * 1000
                self.stats.prompt_apply_ms.observe(latency_ms)
                result.events.append(PromptApplied(frame.session_id, pending_seq, latency_ms))
        self.stats.frames_out.inc(len(done.frames))

    def close(self) -> None:
        for sid in list(self._sessions):
            self.backend.close_session(sid)
        self._sessions.clear()
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
