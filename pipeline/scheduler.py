"""Step scheduling: when the engine launches a step, and with which waiting frames.

A pipelined backend can launch step n+1 while step n runs on the device. Doing that as
soon as any frame waits (the `pipelined` policy) keeps the device busy, but once steps
overlap every frame waits for a whole extra step, and a step launched with a few rows
pays for its whole padded bucket. The `auto` policy launches on an idle device, waiting
a few ms to fill the batch when the measured step costs and the sessions' frame
intervals say that pays, and overlaps steps (launching just before the device would go
idle, with every frame that arrived meanwhile) only while the engine is saturated:
when serving every active session serially would not keep up with their frame rate.
Saturated, a step may take only the rows of a smaller bucket when padding the rest up
would serve fewer frames per second (rows_to_take); the least recently served sessions
go first, so the rows left over lead the next step.

Pure logic on plain numbers: the core calls `decide` with the clock it is given, so a
test drives it with simulated time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.messages import FrameIn
from pipeline.runtime import Schedule

EMA = 0.2
PAUSE_S = 1.0
"""A gap between two frames of a session longer than this is a pause, not its interval."""
MIN_INTERVAL_S = 1 / 60
"""A session counts as sending at most 60 fps: one that sends faster (a broken or hostile
client) cannot make the engine look saturated (it gets one frame per step anyway)."""
LAUNCH_MARGIN = 0.25
"""When saturated, the next step is launched this fraction of a step's device time before
the step in flight should end: step times jitter (other streams, clocks), and a device
left idle by a late launch is throughput lost for good, while launching early only makes
that step's frames a few ms older."""
SATURATED, KEEPS_UP = 0.9, 0.75
"""Utilisation above which steps overlap, and below which they stop overlapping again."""
SPLIT_GAIN = 0.05
"""When saturated, a step takes fewer rows than wait (those of a smaller bucket, the rest
going in the next step) only if that serves this much more frames per second of device
time than padding all of them up: 12 rows padded to 16 cost a 16-row step, while 8 now
and the rest next serve about 30 % more frames per second on the H200's step costs."""


def _ema(old: float | None, sample: float) -> float:
    return sample if old is None else old + EMA * (sample - old)


@dataclass(frozen=True, slots=True)
class Arrival:
    last: float
    """time.monotonic() of the session's newest frame."""
    interval: float | None
    """Smoothed time between its frames (None until two have come)."""


class ArrivalTracker:
    """When each session's frames come in (recorded as they arrive, before any is taken)."""

    def __init__(self) -> None:
        self._arrivals: dict[str, Arrival] = {}

    def record(self, session_id: str, t: float) -> None:
        prev = self._arrivals.get(session_id)
        interval = None if prev is None else prev.interval
        if prev is not None and 0 < t - prev.last < PAUSE_S:
            interval = _ema(interval, t - prev.last)
        self._arrivals[session_id] = Arrival(t, interval)

    def forget(self, session_id: str) -> None:
        self._arrivals.pop(session_id, None)

    def snapshot(self) -> dict[str, Arrival]:
        return dict(self._arrivals)


@dataclass(frozen=True, slots=True)
class Launch:
    session_ids: tuple[str, ...]
    """Take these sessions' waiting frames and launch them as one step."""


@dataclass(frozen=True, slots=True)
class Collect:
    """Wait for the oldest step in flight."""


@dataclass(frozen=True, slots=True)
class Wait:
    until: float | None
    """Decide again at this time (None: when something new arrives)."""


Decision = Launch | Collect | Wait
COLLECT = Collect()


class StepCosts:
    """Measured step times per batch bucket, in seconds (smoothed)."""

    def __init__(self) -> None:
        self._serial: dict[int, float] = {}
        """Launch -> collected, for steps launched on an idle device."""
        self._chained: dict[int, float] = {}
        """Previous step collected -> this one collected, for steps launched behind another."""
        self._host: float | None = None
        """Time the engine thread spends launching a step."""

    def observe(self, bucket: int, *, serial: float | None, chained: float | None, host: float) -> None:
        if serial is not None:
            self._serial[bucket] = _ema(self._serial.get(bucket), serial)
        if chained is not None:
            self._chained[bucket] = _ema(self._chained.get(bucket), chained)
        self._host = _ema(self._host, host)

    @property
    def host(self) -> float:
        return self._host or 0.0

    def step(self, bucket: int) -> float:
        """Estimated cost of a step of this bucket on an idle device (0 when unknown)."""
        return _estimate(self._serial, bucket)

    def device(self, bucket: int) -> float:
        """Estimated device time of a step launched behind another."""
        if self._chained:
            return _estimate(self._chained, bucket)
        return max(0.0, self.step(bucket) - self.host)

    def measured_device(self, bucket: int) -> float | None:
        """Device time of a step of exactly this bucket, as measured (behind another, else
        on an idle device less the launch); None if no such step ran yet."""
        if bucket in self._chained:
            return self._chained[bucket]
        if bucket in self._serial:
            return max(0.0, self._serial[bucket] - self.host)
        return None


def _estimate(known: dict[int, float], bucket: int) -> float:
    """The nearest measured bucket at or above (padding makes costs monotonic), else the
    largest below scaled by rows."""
    above = [b for b in known if b >= bucket]
    if above:
        return known[min(above)]
    below = [b for b in known if b < bucket]
    return known[max(below)] * bucket / max(below) if below else 0.0


class Scheduler:
    def __init__(self, policy: Schedule, max_batch: int, bucket_for: Callable[[int], int], pipelined: bool) -> None:
        self.policy = policy
        self.max_batch = max_batch
        self.bucket_for = bucket_for
        self.pipelined = pipelined
        self.costs = StepCosts()
        self.saturated = False
        self._served: dict[str, float] = {}
        """When each session's frame was last taken into a step: the least recently served
        go first. By waiting frame age alone, a session whose frame was left for the next
        step would lose its place as soon as a newer frame replaced it in its slot."""

    def expected_done(self, t_launch: float, bucket: int, behind: float | None) -> float:
        """When a step launched now should be collected; `behind`: when the step in flight
        ahead of it should be."""
        if behind is not None and behind > t_launch:
            return behind + self.costs.device(bucket)
        return t_launch + self.costs.step(bucket)

    def decide(
        self, now: float, waiting: Sequence[FrameIn], inflight: Sequence[float], arrivals: Mapping[str, Arrival]
    ) -> Decision:
        """waiting: the frames that may go in the next step; inflight: the expected done
        time of each step in flight, oldest first."""
        if len(inflight) >= 2 or (inflight and not self.pipelined):
            return COLLECT
        order = sorted(waiting, key=lambda f: (self._served.get(f.session_id, -math.inf), f.t_in))
        batch = tuple(f.session_id for f in order[: self.max_batch])
        if self.policy == "auto" and self._saturated(now, arrivals) and inflight:
            batch = batch[: self.rows_to_take(len(batch))]
            # Just before the device runs dry, not earlier: the step would not finish sooner,
            # and frames taken later are fresher (a newer one replaces each in its slot).
            bucket = self.bucket_for(max(1, len(batch)))
            launch_at = inflight[-1] - self.costs.host - LAUNCH_MARGIN * self.costs.device(bucket)
            if now < launch_at:
                return Wait(launch_at)
            return self._launch(now, batch, arrivals) if batch else COLLECT
        if not batch:
            return COLLECT if inflight else Wait(None)
        if self.policy == "pipelined":
            return self._launch(now, batch, arrivals)
        if inflight:  # serial, or auto while the engine keeps up: finish the step first
            return COLLECT
        if self.policy == "serial":
            return self._launch(now, batch, arrivals)
        at = self._fill_until(now, waiting, arrivals)
        return self._launch(now, batch, arrivals) if at <= now else Wait(at)

    def _launch(self, now: float, batch: tuple[str, ...], arrivals: Mapping[str, Arrival]) -> Launch:
        for sid in batch:
            self._served[sid] = now
        if len(self._served) > 2 * len(arrivals) + 64:  # bounded by the live sessions
            self._served = {sid: t for sid, t in self._served.items() if sid in arrivals}
        return Launch(batch)

    # ---- auto ----------------------------------------------------------------------------

    def rows_to_take(self, rows: int) -> int:
        """How many of `rows` waiting frames (oldest first) a saturated step takes: all of
        them, or the rows of a smaller bucket when that serves SPLIT_GAIN more frames per
        second of device time than padding all of them up (the rest wait one step, in
        their latest-frame slots). A smaller bucket whose cost was never measured is
        tried once, so that a load that jumps straight to 12 sessions learns it."""
        padded = self.bucket_for(rows) if rows > 0 else 0
        whole = self.costs.measured_device(padded) if rows > 0 else None
        if not whole:
            return rows
        best, best_rate = rows, rows / whole
        for bucket in sorted({self.bucket_for(k) for k in range(1, rows)}):
            if bucket >= rows:
                continue
            cost = self.costs.measured_device(bucket)
            if cost is None and rows < padded * (1 - SPLIT_GAIN):
                return bucket  # padding wastes rows: learn what the smaller step costs
            if cost and bucket / cost > best_rate * (1 + SPLIT_GAIN):
                best, best_rate = bucket, bucket / cost
        return best

    def utilisation(self, now: float, arrivals: Mapping[str, Arrival]) -> float:
        """Frames per second the active sessions send, times the serial cost of serving
        one frame of each of them, per frame."""
        active = [
            a.interval
            for a in arrivals.values()
            if a.interval is not None and now - a.last < max(PAUSE_S, 3 * a.interval)
        ]
        if not active:
            return 0.0
        cycle, rows = 0.0, len(active)
        while rows > 0:
            take = min(rows, self.max_batch)
            cycle += self.costs.step(self.bucket_for(take))
            rows -= take
        return sum(1 / max(i, MIN_INTERVAL_S) for i in active) * cycle / len(active)

    def _saturated(self, now: float, arrivals: Mapping[str, Arrival]) -> bool:
        u = self.utilisation(now, arrivals)
        if u > SATURATED:
            self.saturated = True
        elif u < KEEPS_UP:
            self.saturated = False
        return self.saturated

    def _fill_until(self, now: float, waiting: Sequence[FrameIn], arrivals: Mapping[str, Arrival]) -> float:
        """When to launch on the idle device: now, or at one of the next expected arrivals
        within one step's cost, whichever gives the lowest mean latency over the frames
        waiting and those expected soon (included, or served by the step after)."""
        rows = min(len(waiting), self.max_batch)
        base = self.costs.step(self.bucket_for(rows))
        if rows >= self.max_batch or base <= 0:
            return now
        horizon = now + 0.5 * base
        reach = horizon + self.costs.step(self.bucket_for(self.max_batch))
        waiting_ids = {f.session_id for f in waiting}
        upcoming = sorted(
            a.last + a.interval
            for sid, a in arrivals.items()
            if sid not in waiting_ids and a.interval is not None and now < a.last + a.interval <= reach
        )
        t_ins = sorted(f.t_in for f in waiting)
        best_t, best_cost = now, math.inf
        for t in [now, *(u for u in upcoming if u <= horizon)]:
            joined = [*t_ins, *(u for u in upcoming if u <= t)]
            included, overflow = joined[: self.max_batch], joined[self.max_batch :]
            later = overflow + [u for u in upcoming if u > t]
            done = t + self.costs.step(self.bucket_for(len(included)))
            total = sum(done - ti for ti in included)
            if later:
                after = self.costs.step(self.bucket_for(min(len(later), self.max_batch)))
                total += sum(max(u, done) + after - u for u in later)
            cost = total / (len(included) + len(later))
            if cost < best_cost - 1e-6:
                best_t, best_cost = t, cost
        return best_t
