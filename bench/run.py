"""The bookkeeping of one `livestyle bench` run: its plan with an ETA and a time budget,
and the results file, rewritten after every scenario so a run cut short still leaves
valid numbers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.provenance import git_state, host_info, now_iso
from bench.schema import SCHEMA_VERSION
from bench.summary import SCOPES, summarize, targets

BUDGET = "the time budget (--budget-s) would not hold it"


@dataclass(frozen=True)
class Step:
    key: str
    label: str
    estimate_s: float
    """On an H100/H200 (compiles on a cold cache)."""


class RunClock:
    """Prints the plan up front; prefixes progress lines with [step k/n | elapsed | ETA],
    the remaining estimates scaled by how this machine has done against the estimates so
    far; refuses a step that would not fit the time budget."""

    def __init__(self, steps: list[Step], budget_s: float | None, out: Callable[[str], None]) -> None:
        self.steps = steps
        self.budget_s = budget_s
        self.out = out
        self.t0 = time.monotonic()
        self._current: int | None = None
        self._began = self.t0
        self._spent: dict[int, float] = {}  # finished steps: seconds they took
        self._skipped: set[int] = set()

    def print_plan(self) -> None:
        total = sum(s.estimate_s for s in self.steps)
        budget = f", budget {self.budget_s:.0f} s" if self.budget_s else ""
        self.out(f"plan: {len(self.steps)} steps, about {total:.0f} s on an H100/H200{budget}")
        for i, s in enumerate(self.steps, 1):
            self.out(f"  {i:>2}. {s.label:<60} ~{s.estimate_s:.0f} s")

    def speed(self) -> float:
        """Actual / estimated seconds of the finished steps (1 before any)."""
        estimate = sum(self.steps[i].estimate_s for i in self._spent)
        return min(4.0, max(0.25, sum(self._spent.values()) / estimate)) if estimate > 0 else 1.0

    def left_s(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - (time.monotonic() - self.t0)

    def begin(self, key: str, required: bool = False) -> bool:
        """Start step `key`; False (the caller skips it) when it would overrun the budget."""
        now = time.monotonic()
        if self._current is not None:
            self._spent[self._current] = now - self._began
            self._current = None
        index = next(i for i, s in enumerate(self.steps) if s.key == key)
        need, left = self.steps[index].estimate_s * self.speed(), self.left_s()
        if not required and left is not None and need > left:
            self._skipped.add(index)
            self.out(f"skipping {self.steps[index].label}: needs ~{need:.0f} s, {max(left, 0):.0f} s of budget left")
            return False
        self._current, self._began = index, now
        self(self.steps[index].label)
        return True

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        rest = sum(s.estimate_s for i, s in enumerate(self.steps) if i not in self._spent and i not in self._skipped)
        if self._current is not None:
            rest -= min(now - self._began, self.steps[self._current].estimate_s)
        k = (self._current if self._current is not None else len(self._spent)) + 1
        self.out(f"[{k}/{len(self.steps)} | {now - self.t0:.0f} s | ETA {rest * self.speed():.0f} s] {message}")


class ResultsFile:
    """Everything the run found so far; save() rewrites the file."""

    def __init__(self, path: Path, harness: dict[str, Any], device: dict[str, Any]) -> None:
        self.path = path
        self.scenarios: dict[str, Any] = {}
        self.skipped: list[dict[str, str]] = []
        self.engines: dict[str, Any] = {}
        """Effective engine configurations of this process, by name."""
        self.processes: list[dict[str, Any]] = [{**harness, "role": "harness", "engines": self.engines}]
        self.device = {k: v for k, v in device.items() if v is not None}  # unknown ones omitted
        self.git = git_state()
        self.host = host_info()
        self.t0 = time.monotonic()

    def skip(self, scenario: str, reason: str) -> None:
        self.skipped.append({"scenario": scenario, "reason": reason})

    def report(self) -> dict[str, Any]:
        summary = summarize(self.scenarios, self.device.get("gpu", "cpu"))
        return {
            "schema": SCHEMA_VERSION,
            "summary": summary,
            "targets": targets(summary),
            "scenarios": self.scenarios,
            "skipped": self.skipped,
            "meta": {
                "date": now_iso(),
                "git": self.git,
                "device": self.device,
                "host": self.host,
                "processes": self.processes,
                "scopes": {k: SCOPES[k] for k in summary if k in SCOPES},
                "total_seconds": round(time.monotonic() - self.t0, 1),
            },
        }

    def save(self) -> dict[str, Any]:
        report = self.report()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        tmp.replace(self.path)  # a kill mid-write never leaves half a file
        return report
