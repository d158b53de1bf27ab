"""Transport-neutral messages between the engine client and the engine core.

Everything here is plain data (numpy arrays, ints, floats, strings) so that the
engine can later be fed from other processes: no asyncio, aiortc or torch objects
cross this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class FrameIn:
    """One camera frame handed to the engine."""

    session_id: str
    image: np.ndarray
    """RGB uint8, shape (H, W, 3); any size, the engine crops and resizes."""
    pts: int
    time_base: Fraction
    t_in: float
    """time.monotonic() when the frame was received from the network."""


@dataclass(frozen=True, slots=True)
class FrameOut:
    """One stylized frame, carrying its source frame's timestamps."""

    session_id: str
    image: np.ndarray
    """RGB uint8, shape (S, S, 3) with S the engine's output size."""
    pts: int
    time_base: Fraction
    t_in: float
    t_out: float
    """time.monotonic() when the engine finished the frame."""
    prompt_seq: int
    """seq of the prompt the frame was made with (0 = the session's initial prompt)."""


# ---- commands: client -> core, drained between steps -------------------------------


@dataclass(frozen=True, slots=True)
class AddSession:
    session_id: str
    prompt: str
    seq: int = 0
    """seq of `prompt` (non-zero when a session is re-attached to a rebuilt engine)."""


@dataclass(frozen=True, slots=True)
class RemoveSession:
    session_id: str


@dataclass(frozen=True, slots=True)
class SetPrompt:
    session_id: str
    prompt: str
    seq: int
    t_received: float
    """time.monotonic() when the request reached the server (start of prompt latency)."""


@dataclass(frozen=True, slots=True)
class SetAdapterStrength:
    session_id: str
    value: float
    """Temporal adapter multiplier, 0..1.5."""
    seq: int


@dataclass(frozen=True, slots=True)
class Reseed:
    """New fixed noise for a session ("reroll"): same prompt, another take on it."""

    session_id: str
    seed: int
    seq: int


Command = AddSession | RemoveSession | SetPrompt | SetAdapterStrength | Reseed


# ---- events: core -> client -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptApplied:
    session_id: str
    seq: int
    latency_ms: float
    """From command receipt to the first output frame made with the new prompt."""


ErrorCode = Literal[
    "adapter_unavailable",
    "prompt_too_long",
    "prompt_invalid",
    "bad_frame",
    "unknown_session",
    "session_failed",
    "engine_restarting",
    "engine_failed",
]


@dataclass(frozen=True, slots=True)
class SessionError:
    """A recoverable error that concerns one session; the engine keeps running."""

    session_id: str
    code: ErrorCode
    message: str
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class EngineFailed:
    """The engine gave up for good (no more restarts): every session must be told."""

    message: str


@dataclass(frozen=True, slots=True)
class TransientFault:
    """The backend recovered from an error (e.g. out of GPU memory) by dropping the
    frames of the steps in flight; the engine keeps running."""

    message: str
    frames_lost: int


Event = PromptApplied | SessionError | EngineFailed | TransientFault


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the engine is, for logs, /healthz and the page."""

    kind: Literal["preview", "diffusion"]
    model: str
    reason: str
    """Why this engine was chosen (shown to users, e.g. why not the diffusion model)."""
    output_size: int
    max_batch: int
    max_prompt_chars: int
    adapter: str | None = None
    """Description of the temporal adapter when one is loaded (the page offers its strength)."""
