"""Test doubles for the engine backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from pipeline.client import EngineSpec
from pipeline.core import AdapterUnavailable, EngineCore, PromptRejected
from pipeline.messages import EngineInfo, FrameIn
from pipeline.stats import EngineStats


class FakeBackend:
    """Deterministic backend: output pixel value = prompt's length % 256, so tests can
    tell which prompt made a frame. Can be slowed down or made to fail."""

    def __init__(
        self, *, step_delay: float = 0.0, max_batch: int = 8, max_prompt_chars: int = 50, size: int = 32
    ) -> None:
        self.info = EngineInfo(
            kind="preview",
            model="fake",
            reason="test double",
            output_size=size,
            max_batch=max_batch,
            max_prompt_chars=max_prompt_chars,
        )
        self.pipelined = False
        self.step_delay = step_delay
        self.fail_next_step: Exception | None = None
        self.fail_warmup: Exception | None = None
        self.warmup_gate: threading.Event | None = None
        self.prompts: dict[str, str] = {}
        self.batches: list[list[str]] = []
        self.closed = False

    def warmup(self, progress: Callable[[str], None]) -> None:
        if self.warmup_gate is not None:
            self.warmup_gate.wait(10)
        if self.fail_warmup is not None:
            raise self.fail_warmup
        progress("fake warm-up done")

    def check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.info.max_prompt_chars:
            raise PromptRejected("prompt_too_long", f"{len(prompt)} > {self.info.max_prompt_chars}")

    def open_session(self, session_id: str, prompt: str) -> None:
        self.prompts[session_id] = prompt

    def close_session(self, session_id: str) -> None:
        self.prompts.pop(session_id, None)

    def set_prompt(self, session_id: str, prompt: str) -> None:
        self.prompts[session_id] = prompt

    def collect(self, ticket: list[np.ndarray]) -> list[np.ndarray]:
        return ticket

    def submit(self, frames: Sequence[FrameIn]) -> list[np.ndarray]:
        if self.fail_next_step is not None:
            exc, self.fail_next_step = self.fail_next_step, None
            raise exc
        self.batches.append([f.session_id for f in frames])
        if self.step_delay:
            time.sleep(self.step_delay)
        size = self.info.output_size
        return [np.full((size, size, 3), len(self.prompts[f.session_id]) % 256, dtype=np.uint8) for f in frames]

    def set_adapter_strength(self, session_id: str, value: float) -> None:
        raise AdapterUnavailable("the preview engine has no temporal adapter")

    def close(self) -> None:
        self.closed = True


def fake_spec(backend: FakeBackend) -> EngineSpec:
    def build(stats: EngineStats) -> EngineCore:
        return EngineCore(backend, stats)

    return EngineSpec(info=backend.info, build=build)


def frame_in(
    session_id: str, image: np.ndarray | int = 0, *, size: int = 32, pts: int = 0, t_in: float | None = None
) -> FrameIn:
    """A FrameIn from an image, or from a fill value for a size x size frame."""
    if isinstance(image, int):
        image = np.full((size, size, 3), image, np.uint8)
    return FrameIn(session_id, image, pts, Fraction(1, 90000), time.monotonic() if t_in is None else t_in)


class FakeDataChannel:
    """Stands in for an open aiortc RTCDataChannel: records what the server sends and lets a
    test deliver client messages to whatever handler was registered for "message"."""

    def __init__(self, label: str = "control") -> None:
        self.label = label
        self.readyState = "open"
        self.sent: list[str] = []
        self._handlers: dict[str, Callable[..., object]] = {}

    def on(self, event: str, handler: Callable[..., object]) -> None:
        self._handlers[event] = handler

    def send(self, text: str) -> None:
        self.sent.append(text)

    def deliver(self, raw: str | bytes) -> None:
        self._handlers["message"](raw)
