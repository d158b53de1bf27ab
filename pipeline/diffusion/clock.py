"""Optional per-stage timing of a step (benchmarks turn it on)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

Marks = list[tuple[str, Any]] | None


class StageClock:
    """CUDA events on each stream (wall clock on CPU). Off by default: events on the hot
    path cost a little, and the benchmark turns it on."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.enabled = False
        self.samples: dict[str, list[float]] = {}

    def mark(self, marks: Marks, name: str) -> None:
        """Record the end of stage `name` on the current stream."""
        if marks is None:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append((name, event))
        else:
            marks.append((name, time.perf_counter()))

    def new(self) -> Marks:
        if not self.enabled:
            return None
        marks: list[tuple[str, Any]] = []
        self.mark(marks, "start")
        return marks

    def finish(self, *mark_lists: Marks) -> None:
        """After the work is done: turn consecutive marks into stage durations (ms)."""
        for marks in mark_lists:
            if not marks:
                continue
            for (_, a), (name, b) in itertools.pairwise(marks):
                ms = a.elapsed_time(b) if self.cuda else (b - a) * 1000
                self.samples.setdefault(name, []).append(ms)
