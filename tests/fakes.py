"""Test doubles for the engine backend: deterministic, slowable, and able to fail, run out
of memory or hang on step N; an engine spec that builds a new backend per (re)build; a
simulated clock and a pipelined backend with a step-cost model for scheduling tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from pipeline.client import EngineSpec
from pipeline.core import AdapterUnavailable, Backend, EngineCore, PromptRejected
from pipeline.messages import EngineInfo, FrameIn
from pipeline.preview import PreviewBackend
from pipeline.stats import EngineStats

HANG_S = 120.0
"""A hung fake step returns by itself after this long, so no test can leak a thread forever."""

FaultKind = Literal["raise", "oom", "hang"]


class FakeOutOfMemory(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError: the fakes' recover() accepts it."""


class FakeFaults:
    """Faults injected by step number: the n-th submit (from 1) raises a fatal error, runs
    out of memory, or hangs until `release` is set. Each fires once."""

    def __init__(self, plan: dict[int, FaultKind] | None = None) -> None:
        self.plan: dict[int, FaultKind] = dict(plan or {})
        self.steps = 0
        self.hung = threading.Event()
        """Set when a step starts hanging."""
        self.release = threading.Event()
        self.recovered: list[BaseException] = []
        self._next: FaultKind | None = None
        self._lock = threading.Lock()

    def inject(self, kind: FaultKind) -> None:
        """The next step, whichever it is, fails this way (callable from any thread)."""
        with self._lock:
            self._next = kind

    def before_submit(self) -> None:
        with self._lock:
            self.steps += 1
            kind = self.plan.pop(self.steps, None)
            if kind is None:
                kind, self._next = self._next, None
        if kind == "raise":
            raise RuntimeError(f"fake fatal error on step {self.steps}")
        if kind == "oom":
            raise FakeOutOfMemory(f"CUDA out of memory (fake, step {self.steps})")
        if kind == "hang":
            self.hung.set()
            self.release.wait(HANG_S)

    def recover(self, exc: BaseException) -> bool:
        if isinstance(exc, FakeOutOfMemory):
            self.recovered.append(exc)
            return True
        return False


class FakeBackend:
    """Deterministic backend: output pixel value = prompt's length % 256, so tests can
    tell which prompt made a frame. Can be slowed down or made to fail; counts the text
    work (sessions needing fresh conditioning) of every step."""

    def __init__(
        self,
        *,
        step_delay: float = 0.0,
        max_batch: int = 8,
        max_prompt_chars: int = 50,
        size: int = 32,
        adapter: bool = False,
    ) -> None:
        self.info = EngineInfo(
            kind="preview",
            model="fake",
            reason="test double",
            output_size=size,
            max_batch=max_batch,
            max_prompt_chars=max_prompt_chars,
            adapter="fake adapter" if adapter else None,
        )
        self.pipelined = False
        self.strengths: dict[str, float] = {}
        self.seeds: dict[str, int] = {}
        self.step_delay = step_delay
        self.faults = FakeFaults()
        self.fail_next_step: Exception | None = None
        self.fail_warmup: Exception | None = None
        self.warmup_gate: threading.Event | None = None
        self.prompts: dict[str, str] = {}
        self.batches: list[list[str]] = []
        self.text_work: list[int] = []
        """Per submit: how many of its sessions needed new conditioning (new, or new prompt)."""
        self.set_prompt_calls = 0
        self._stale: set[str] = set()
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
        self._stale.add(session_id)

    def close_session(self, session_id: str) -> None:
        self.prompts.pop(session_id, None)
        self._stale.discard(session_id)

    def set_prompt(self, session_id: str, prompt: str) -> None:
        self.set_prompt_calls += 1
        self.prompts[session_id] = prompt
        self._stale.add(session_id)

    def collect(self, ticket: list[np.ndarray]) -> list[np.ndarray]:
        return ticket

    def submit(self, frames: Sequence[FrameIn]) -> Any:
        if self.fail_next_step is not None:
            exc, self.fail_next_step = self.fail_next_step, None
            raise exc
        self.faults.before_submit()
        sids = [f.session_id for f in frames]
        self.batches.append(sids)
        self.text_work.append(len(self._stale.intersection(sids)))
        self._stale.difference_update(sids)
        if self.step_delay:
            time.sleep(self.step_delay)
        size = self.info.output_size
        return [np.full((size, size, 3), len(self.prompts[f.session_id]) % 256, dtype=np.uint8) for f in frames]

    def recover(self, exc: BaseException) -> bool:
        return self.faults.recover(exc)

    def reseed(self, session_id: str, seed: int) -> None:
        self.seeds[session_id] = seed

    def set_adapter_strength(self, session_id: str, value: float) -> None:
        if self.info.adapter is None:
            raise AdapterUnavailable("the preview engine has no temporal adapter")
        self.strengths[session_id] = value

    def close(self) -> None:
        self.closed = True


class FakeFaultyPreview(PreviewBackend):
    """The real preview stylizer with injected faults (for tests through the real server)."""

    def __init__(self, faults: FakeFaults, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faults = faults

    def submit(self, frames: Sequence[FrameIn]) -> list[np.ndarray]:
        self.faults.before_submit()
        return super().submit(frames)

    def recover(self, exc: BaseException) -> bool:
        return self.faults.recover(exc)


def fake_spec(backend: Backend) -> EngineSpec:
    """A spec whose every build wraps this one backend."""

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        return EngineCore(backend, stats)

    return EngineSpec(info=backend.info, build=build)


class FakeEngines:
    """A spec that builds a new backend per build with make(n) (n = 0 for the first), so a
    rebuilt engine shares nothing with the one it replaces; builds listed in `fail_builds`
    raise instead, and `gate`, when set, holds every build until it is set."""

    def __init__(self, make: Callable[[int], Backend] | None = None) -> None:
        self.make = make or (lambda _n: FakeBackend())
        self.backends: list[Backend] = []
        self.fail_builds: set[int] = set()
        self.gate: threading.Event | None = None
        self.spec = EngineSpec(info=self.make(-1).info, build=self._build)

    def _build(self, stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        n = len(self.backends)
        progress(f"fake build {n}: loading")
        if self.gate is not None:
            self.gate.wait(10)
        backend = self.make(n)
        self.backends.append(backend)
        if n in self.fail_builds:
            raise RuntimeError(f"fake build {n} failed")
        return EngineCore(backend, stats)


class FakeClock:
    """Simulated time.monotonic() for stepped cores."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        self.t = max(self.t, t)


class FakeTimedBackend(FakeBackend):
    """A pipelined backend on a FakeClock: submit costs `host_s` of host time and queues
    `device_s[bucket]` of device work behind whatever is in flight; collect waits (moves
    the clock) until the step is done, plus `collect_s` to copy the results out. `jitter`:
    sigma of a log-normal factor on each step's device time (a real GPU's steps vary: other
    streams, clocks), drawn from a generator seeded with `seed`."""

    def __init__(
        self,
        clock: FakeClock,
        device_s: dict[int, float],
        *,
        host_s: float,
        collect_s: float,
        max_batch: int,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(max_batch=max_batch)
        self.pipelined = True
        self.clock = clock
        self.device_s = device_s
        self.host_s = host_s
        self.collect_s = collect_s
        self.jitter = jitter
        self._rng = np.random.default_rng(seed)
        self._device_free = 0.0

    def bucket_for(self, rows: int) -> int:
        return min(b for b in self.device_s if b >= rows)

    def submit(self, frames: Sequence[FrameIn]) -> Any:
        images = super().submit(frames)
        self.clock.advance_to(self.clock() + self.host_s)
        start = max(self.clock(), self._device_free)
        factor = float(self._rng.lognormal(0.0, self.jitter)) if self.jitter else 1.0
        self._device_free = start + self.device_s[self.bucket_for(len(frames))] * factor
        return images, self._device_free

    def collect(self, ticket: Any) -> list[np.ndarray]:
        images, done = ticket
        self.clock.advance_to(done)
        self.clock.advance_to(self.clock() + self.collect_s)
        return list(images)


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
