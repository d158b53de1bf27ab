"""Plain, dependency-free metric holders.

The engine and the signaling layer record into these; the HTTP edge exports them
(Prometheus) by reading them at scrape time, so no layer below server/ needs to
know about a metrics library or a global registry.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

# Milliseconds: covers a 1 ms CPU filter up to a multi-second stall.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    20,
    33,
    50,
    75,
    100,
    150,
    250,
    500,
    1000,
    2500,
    5000,
)


class Histogram:
    """Cumulative histogram with fixed upper bounds; safe to observe from any thread."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (upper bound, count) pairs incl. +Inf, sum, count)."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative = []
        running = 0
        for bound, c in zip([*self.buckets, float("inf")], counts, strict=False):
            running += c
            cumulative.append((bound, running))
        return cumulative, total, running


class Counter:
    """A monotonically increasing count; += on an int attribute is atomic enough under
    the GIL for one writer, and the lock keeps it right with several."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def inc(self, n: int = 1) -> None:
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        return self._value


@dataclass
class EngineStats:
    """Engine-wide counters (all sessions)."""

    frames_in: Counter = field(default_factory=Counter)
    frames_out: Counter = field(default_factory=Counter)
    frames_dropped: Counter = field(default_factory=Counter)
    """Input frames overwritten in their slot before the engine took them."""
    steps: Counter = field(default_factory=Counter)
    step_ms: Histogram = field(default_factory=Histogram)
    batch_size: Histogram = field(default_factory=lambda: Histogram((1, 2, 4, 8, 16, 32)))
    frame_latency_ms: Histogram = field(default_factory=Histogram)
    """Frame handed to the engine -> stylized frame ready (per frame)."""
    prompt_apply_ms: Histogram = field(default_factory=Histogram)
    steps_overlapped: Counter = field(default_factory=Counter)
    """Steps launched while another was still in flight."""
    prompts_coalesced: Counter = field(default_factory=Counter)
    """Prompt changes replaced by a newer one of the same session before the engine took them."""
    transient_faults: Counter = field(default_factory=Counter)
    """Backend errors recovered from by dropping the steps in flight (e.g. out of GPU memory)."""
    frames_lost: Counter = field(default_factory=Counter)
    """Frames dropped with the steps of a transient fault."""


class RateWindow:
    """Events per second and a median over a sliding window (single-threaded use)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float = 0.0) -> None:
        self._events.append((now, value))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._events) / self.window_s

    def median(self, now: float) -> float | None:
        self._trim(now)
        if not self._events:
            return None
        values = sorted(v for _, v in self._events)
        return values[len(values) // 2]
