"""What the engine core needs from a model: the Backend protocol and the errors a backend
raises on purpose (pipeline/core.py re-exports them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from pipeline.messages import EngineInfo, FrameIn


class PromptRejected(Exception):
    """The backend cannot use this prompt (too long for its token budget, empty...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdapterUnavailable(Exception):
    """The engine runs without a temporal adapter (start it with --lllite PATH)."""


class EngineFatalError(RuntimeError):
    """The backend failed in a way that leaves the engine unusable (it is rebuilt)."""


class Backend(Protocol):
    """A model that stylizes batches of frames. It owns per-session model state
    (cached prompt embeddings, noise, previous output) but no bookkeeping.

    Work is split into submit (launch) and collect (wait for the result). A `pipelined`
    backend may have one batch in flight while the next is submitted (GPU work of step n
    overlaps the launch of step n+1); a synchronous one does everything in submit.

    Optional members, looked up with getattr:
    - `recover(exc) -> bool`: called after submit or collect raised. True means the error
      was transient (e.g. CUDA out of memory) and the backend dropped its in-flight state
      and freed memory: the core drops the frames of the steps in flight and goes on.
      False, or no such method: the error is fatal.
    - `bucket_for(rows) -> int`: the padded batch size a step of `rows` frames costs (the
      scheduler's cost model is per bucket; default: rows)."""

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

    def reseed(self, session_id: str, seed: int) -> None:
        """The session's frames from now on use the fixed noise of `seed` (the preview
        engine: a palette variation of the same prompt)."""

    def submit(self, frames: Sequence[FrameIn]) -> Any:
        """Start stylizing; returns a ticket for collect(). Frames may share a session
        (clip mode) only when the caller allows it."""

    def collect(self, ticket: Any) -> list[np.ndarray]:
        """One output image per submitted frame, in order (blocks until ready)."""

    def close(self) -> None: ...
