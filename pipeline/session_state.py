"""The core's per-session bookkeeping: prompts (with the per-step text budget), the seq
each frame is made with, and the prompt-applied events still owed.

Text-encoder work (a session's first conditioning, or a prompt change) is handed out in
turns: at most `text_budget` sessions per step, in the order they asked. A session
waiting for a prompt turn keeps streaming with its current conditioning; a new session's
frames wait for its first turn. A newer prompt replaces a waiting one (latest wins) and
keeps its place in the queue, so a session that floods prompts never jumps ahead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.backend import AdapterUnavailable, Backend, PromptRejected
from pipeline.messages import (
    AddSession,
    ErrorCode,
    Event,
    FrameIn,
    PromptApplied,
    Reseed,
    SessionError,
    SetAdapterStrength,
    SetPrompt,
)

log = logging.getLogger(__name__)


@dataclass
class _Session:
    prompt_seq: int = 0
    """seq of the prompt the backend holds for the session (what its frames are made with)."""
    pending: SetPrompt | None = None
    """A newer prompt waiting for its text turn."""
    owed: tuple[int, float] | None = None
    """(seq, t_received) of a prompt not yet seen in an output frame."""
    conditioned: bool = False
    """True once a step has carried a frame of the session (its first conditioning)."""


class SessionTable:
    def __init__(self, backend: Backend, text_budget: int) -> None:
        self.backend = backend
        self.text_budget = text_budget
        self._sessions: dict[str, _Session] = {}
        self._queue: dict[str, None] = {}
        """Sessions owed text work, in the order they asked (a dict keeps insertion order)."""

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    @property
    def ids(self) -> list[str]:
        return list(self._sessions)

    def _guard(self, session_id: str, seq: int | None, fn: Callable[..., Any], *args: Any) -> SessionError | None:
        """Run a backend call for one session; its failure is that session's error only."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("session=%s backend %s failed", session_id, getattr(fn, "__name__", fn))
            return SessionError(session_id, "session_failed", f"{type(exc).__name__}: {exc}", seq)
        return None

    # ---- commands --------------------------------------------------------------------------

    def add(self, cmd: AddSession) -> list[Event]:
        if cmd.session_id in self._sessions:
            return []
        events: list[Event] = []
        prompt = cmd.prompt
        problem = self._prompt_problem(cmd.session_id, prompt, None)
        if problem is not None:
            events.append(SessionError(cmd.session_id, "prompt_invalid", problem.message))
            prompt = ""  # start with an empty edit instead of refusing the whole session
        error = self._guard(cmd.session_id, None, self.backend.open_session, cmd.session_id, prompt)
        if error is not None:
            return [*events, error]
        self._sessions[cmd.session_id] = _Session(prompt_seq=cmd.seq)
        self._queue[cmd.session_id] = None
        return events

    def remove(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is not None:
            self._queue.pop(session_id, None)
            if (error := self._guard(session_id, None, self.backend.close_session, session_id)) is not None:
                log.warning("session=%s close failed: %s", session_id, error.message)

    def set_prompt(self, cmd: SetPrompt) -> list[Event]:
        state = self._sessions.get(cmd.session_id)
        if state is None:
            return [SessionError(cmd.session_id, "unknown_session", "session is not open", cmd.seq)]
        problem = self._prompt_problem(cmd.session_id, cmd.prompt, cmd.seq)
        if problem is not None:
            return [problem]
        state.pending = cmd
        self._queue.setdefault(cmd.session_id, None)
        return []

    def set_adapter_strength(self, cmd: SetAdapterStrength) -> list[Event]:
        if cmd.session_id not in self._sessions:
            return [SessionError(cmd.session_id, "unknown_session", "session is not open", cmd.seq)]
        try:
            self.backend.set_adapter_strength(cmd.session_id, cmd.value)
        except AdapterUnavailable as exc:
            return [SessionError(cmd.session_id, "adapter_unavailable", str(exc), cmd.seq)]
        except Exception as exc:
            log.exception("session=%s set_adapter_strength failed", cmd.session_id)
            return [SessionError(cmd.session_id, "session_failed", f"{type(exc).__name__}: {exc}", cmd.seq)]
        return []

    def reseed(self, cmd: Reseed) -> list[Event]:
        if cmd.session_id not in self._sessions:
            return [SessionError(cmd.session_id, "unknown_session", "session is not open", cmd.seq)]
        error = self._guard(cmd.session_id, cmd.seq, self.backend.reseed, cmd.session_id, cmd.seed)
        return [] if error is None else [error]

    def _prompt_problem(self, session_id: str, prompt: str, seq: int | None) -> SessionError | None:
        try:
            self.backend.check_prompt(prompt)
        except PromptRejected as exc:
            code: ErrorCode = "prompt_too_long" if exc.code == "prompt_too_long" else "prompt_invalid"
            return SessionError(session_id, code, exc.message, seq)
        except Exception as exc:  # noqa: BLE001 - a prompt the backend chokes on is that session's problem
            message = f"the prompt cannot be used ({type(exc).__name__}: {exc})"
            return SessionError(session_id, "prompt_invalid", message, seq)
        return None

    # ---- steps -----------------------------------------------------------------------------

    def _turns(self, candidates: set[str]) -> set[str]:
        turns: set[str] = set()
        for sid in self._queue:
            if len(turns) >= self.text_budget:
                break
            if sid in candidates:
                turns.add(sid)
        return turns

    def admit(self, frames: Sequence[FrameIn]) -> list[FrameIn]:
        """The frames that may go into the next step: open sessions that already have
        conditioning or get their first text turn now."""
        turns = self._turns({f.session_id for f in frames})
        return [
            f
            for f in frames
            if (s := self._sessions.get(f.session_id)) is not None and (s.conditioned or f.session_id in turns)
        ]

    def begin_step(self, frames: Sequence[FrameIn]) -> tuple[list[int], list[Event]]:
        """Hand out this step's text turns (admitted frames only); returns the prompt seq
        each frame is made with."""
        events: list[Event] = []
        for sid in self._turns({f.session_id for f in frames}):
            del self._queue[sid]
            state = self._sessions[sid]
            cmd, state.pending = state.pending, None
            if cmd is None:
                continue  # first conditioning with the prompt it was opened with
            error = self._guard(sid, cmd.seq, self.backend.set_prompt, sid, cmd.prompt)
            if error is not None:
                events.append(error)
                continue
            state.prompt_seq = cmd.seq
            state.owed = (cmd.seq, cmd.t_received)
        for f in frames:
            self._sessions[f.session_id].conditioned = True
        return [self._sessions[f.session_id].prompt_seq for f in frames], events

    def applied(self, session_id: str, seq: int, t_out: float) -> PromptApplied | None:
        """The PromptApplied owed for a frame made with `seq`, once."""
        state = self._sessions.get(session_id)
        if state is None or state.owed is None or seq < state.owed[0]:
            return None
        owed_seq, t_received = state.owed
        state.owed = None
        return PromptApplied(session_id, owed_seq, (t_out - t_received) * 1000)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.remove(sid)
