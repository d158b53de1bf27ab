"""Scheduling under load (#16 part 3), deterministic: a stepped core on a simulated clock
drives a pipelined fake backend whose step cost follows the H200 measurements (device
time per padded bucket, plus host time to launch and to copy results out). Sessions send
30 fps with random phases and a little jitter; the loop below does what the engine
thread does (commands, plan, launch / collect / wait), with simulated time instead of
sleeping. No wall-clock timing is measured or asserted."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import numpy as np
import pytest
from fakes import FakeClock, FakeTimedBackend, frame_in

from pipeline.core import EngineCore
from pipeline.messages import AddSession
from pipeline.runtime import RuntimeConfig
from pipeline.scheduler import LAUNCH_MARGIN, ArrivalTracker, Collect, Launch, Scheduler, Wait

pytestmark = pytest.mark.unit

# Device ms per bucket, shaped after the H200 numbers of issue #16 (B=1 about 11 ms end to
# end, B=8 286 fps, B=16 282 fps with a cached prompt); host: 1.5 ms launch, 0.5 ms copy out.
ALL_BUCKETS = {1: 8.5, 2: 10.5, 4: 15.0, 8: 26.0, 16: 54.5}
BENCH_BUCKETS = {1: 8.5, 8: 26.0, 16: 54.5}  # `livestyle bench`'s default: 1, 8, 16
HOST_S, COLLECT_S = 0.0015, 0.0005
FPS, SECONDS, SETTLE = 30.0, 6.0, 1.0


def simulate(
    policy: str, sessions: int, device_ms: dict[int, float], seed: int = 0, jitter: float = 0.0
) -> dict[str, float]:
    clock = FakeClock()
    device_s = {b: ms / 1000 for b, ms in device_ms.items()}
    backend = FakeTimedBackend(
        clock, device_s, host_s=HOST_S, collect_s=COLLECT_S, max_batch=16, jitter=jitter, seed=seed
    )
    core = EngineCore(backend, runtime=RuntimeConfig(schedule=policy, text_budget=16), clock=clock)  # type: ignore[arg-type]
    sids = [f"s{i}" for i in range(sessions)]
    for sid in sids:
        core.execute(AddSession(sid, "p"))
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 1 / FPS, sessions)
    arrivals = sorted(
        (phase + k / FPS + float(rng.normal(0, 0.001)), sid)
        for sid, phase in zip(sids, phases, strict=True)
        for k in range(int(SECONDS * FPS))
    )
    slots, tracker = {}, ArrivalTracker()
    latencies: list[float] = []
    delivered: Counter[str] = Counter()
    i = 0
    while True:
        while i < len(arrivals) and arrivals[i][0] <= clock():
            t, sid = arrivals[i]
            slots[sid] = frame_in(sid, t_in=t)
            tracker.record(sid, t)
            i += 1
        decision = core.plan(list(slots.values()), tracker.snapshot())
        if isinstance(decision, Launch):
            result = core.launch([slots.pop(sid) for sid in decision.session_ids])
        elif isinstance(decision, Collect):
            result = core.collect()
        else:
            until = math.inf if decision.until is None else decision.until
            next_arrival = arrivals[i][0] if i < len(arrivals) else math.inf
            if math.isinf(until) and math.isinf(next_arrival):
                break
            clock.advance_to(min(until, next_arrival))
            continue
        for out in result.outputs:
            if SETTLE <= out.t_in <= SECONDS:
                latencies.append((out.t_out - out.t_in) * 1000)
                delivered[out.session_id] += 1
    window = SECONDS - SETTLE
    return {
        "p50": float(np.percentile(latencies, 50)),
        "p95": float(np.percentile(latencies, 95)),
        "fps": statistics.mean(delivered[s] / window for s in sids),
        "fps_min": min(delivered[s] / window for s in sids),
        "overlapped": core.stats.steps_overlapped.value / max(1, core.stats.steps.value),
    }


def table(device_ms: dict[int, float], label: str) -> dict[tuple[str, int], dict[str, float]]:
    rows = {(p, n): simulate(p, n, device_ms) for n in (1, 4, 8, 12, 16) for p in ("pipelined", "serial", "auto")}
    print(f"\nsimulated engine, buckets {label}, {FPS:g} fps per session (latency in ms, fps per session)")
    print(f"{'sessions':>8} | {'policy':>9} | {'p50':>6} | {'p95':>6} | {'fps':>5} | {'min fps':>7} | overlapped")
    for (policy, n), r in rows.items():
        print(
            f"{n:>8} | {policy:>9} | {r['p50']:6.1f} | {r['p95']:6.1f} | {r['fps']:5.1f} | {r['fps_min']:7.1f} |"
            f" {r['overlapped']:.0%}"
        )
    return rows


@pytest.mark.parametrize(("device_ms", "label"), [(ALL_BUCKETS, "1,2,4,8,16"), (BENCH_BUCKETS, "1,8,16")])
def test_auto_cuts_latency_below_saturation_and_keeps_throughput(device_ms, label):
    rows = table(device_ms, label)
    for n in (1, 4, 8, 12, 16):
        auto, piped = rows[("auto", n)], rows[("pipelined", n)]
        assert auto["fps"] >= 0.97 * piped["fps"], (n, auto, piped)  # throughput is not lost
        assert auto["fps_min"] >= 0.95 * piped["fps_min"], (n, auto, piped)
        assert auto["p50"] <= piped["p50"] * 1.01, (n, auto, piped)
        assert auto["p95"] <= piped["p95"] * 1.2, (n, auto, piped)  # waiting to fill a batch costs little
        if piped["overlapped"] > 0.5:  # where today's policy makes every frame wait an extra step
            assert auto["p50"] < 0.8 * piped["p50"], (n, auto, piped)
            assert auto["p95"] < 0.8 * piped["p95"], (n, auto, piped)
    assert rows[("auto", 16)]["overlapped"] > 0.5  # saturated: steps overlap, just in time
    assert rows[("auto", 8)]["overlapped"] < 0.1  # keeping up: they do not


@pytest.mark.parametrize("sessions", [12, 16])
def test_auto_keeps_throughput_when_step_times_jitter(sessions):
    """On the H200, auto delivered 13.5 fps per session at 12 sessions (pipelined's device
    limit there is ~18): the step-cost estimate counted the idle time auto itself left
    before a just-in-time launch, so it waited longer each step. Real steps jitter; with
    25 % log-normal jitter auto must keep pipelined's throughput (and its latency gain)."""
    auto = [simulate("auto", sessions, BENCH_BUCKETS, seed=s, jitter=0.25) for s in range(3)]
    piped = [simulate("pipelined", sessions, BENCH_BUCKETS, seed=s, jitter=0.25) for s in range(3)]
    fps_auto, fps_piped = (statistics.mean(r["fps"] for r in rows) for rows in (auto, piped))
    p50_auto, p50_piped = (statistics.mean(r["p50"] for r in rows) for rows in (auto, piped))
    print(
        f"\n{sessions} sessions, jittered steps: auto {fps_auto:.1f} fps p50 {p50_auto:.0f} ms, "
        f"pipelined {fps_piped:.1f} fps p50 {p50_piped:.0f} ms"
    )
    assert fps_auto >= 0.95 * fps_piped
    assert p50_auto < 0.85 * p50_piped


@pytest.mark.parametrize(("device_ms", "label"), [(ALL_BUCKETS, "1,2,4,8,16"), (BENCH_BUCKETS, "1,8,16")])
def test_a_saturated_engine_steps_a_smaller_bucket_rather_than_pad_and_stays_fair(device_ms, label):
    """12 sessions pad every step to 16 (the H200 gave 12 and 16 sessions the same 18.2 fps
    each, the 16-row ceiling); 8 rows now and the rest next step serve more frames per
    second of device time. Sessions left for the next step must go first then, or some
    starve while others get 30 fps."""
    for sessions, gain in ((10, 1.4), (12, 1.25)):
        auto, piped = simulate("auto", sessions, device_ms), simulate("pipelined", sessions, device_ms)
        print(f"\n{sessions} sessions, buckets {label}: auto {auto}, pipelined {piped}")
        assert auto["fps"] >= gain * piped["fps"], (sessions, auto, piped)
        assert auto["fps_min"] >= 0.85 * auto["fps"], (sessions, auto)  # fair: no session starves
        assert auto["p50"] < piped["p50"], (sessions, auto, piped)
    full = simulate("auto", 16, device_ms)  # nothing to gain at a full bucket
    assert full["fps"] >= 0.97 * simulate("pipelined", 16, device_ms)["fps"]


def test_rows_to_take_compares_measured_frames_per_second():
    s = known_costs(Scheduler("auto", 16, lambda r: 16 if r > 8 else 8, pipelined=True), {8: 28.0, 16: 57.0})
    assert s.rows_to_take(16) == 16  # a full bucket: 16/57 ms ~ 8/28 ms, under SPLIT_GAIN
    assert s.rows_to_take(12) == 8  # 8/28 ms against 12/57 ms: 36 % more
    assert s.rows_to_take(6) == 6  # already the smallest bucket
    slow_eight = known_costs(Scheduler("auto", 16, lambda r: 16 if r > 8 else 8, pipelined=True), {8: 45.0, 16: 57.0})
    assert slow_eight.rows_to_take(12) == 12  # 8/45 ms is less than 12/57 ms: pad
    unknown = known_costs(Scheduler("auto", 16, lambda r: 16 if r > 8 else 8, pipelined=True), {16: 57.0})
    assert unknown.rows_to_take(12) == 8  # never measured: tried once to learn its cost
    assert unknown.rows_to_take(16) == 16  # no padding to win back: no trial
    fresh = Scheduler("auto", 16, lambda r: 16 if r > 8 else 8, pipelined=True)
    assert fresh.rows_to_take(12) == 12  # nothing measured yet


def test_serial_policy_never_overlaps_and_pipelined_does_under_load():
    serial = simulate("serial", 8, ALL_BUCKETS)
    piped = simulate("pipelined", 8, ALL_BUCKETS)
    assert serial["overlapped"] == 0 and piped["overlapped"] > 0.5


# ---- the policy on its own ------------------------------------------------------------------


def known_costs(scheduler: Scheduler, ms: dict[int, float]) -> Scheduler:
    for bucket, cost in ms.items():
        scheduler.costs.observe(bucket, serial=cost / 1000, chained=None, host=HOST_S)
    return scheduler


def test_idle_device_waits_for_a_frame_due_soon_only_when_the_bucket_is_padded():
    from pipeline.scheduler import Arrival

    padded = known_costs(Scheduler("auto", 8, lambda r: 8, pipelined=True), {8: 28.0})
    waiting = [frame_in("a", t_in=0.999)]
    soon = {"a": Arrival(0.999, 1 / 30), "b": Arrival(1.0 - 1 / 30 + 0.004, 1 / 30)}  # b due at 1.004
    assert padded.decide(1.0, waiting, [], soon) == Wait(pytest.approx(1.004))
    late = {"a": Arrival(0.999, 1 / 30), "b": Arrival(1.0 - 1 / 30 + 0.025, 1 / 30)}  # b due in 25 ms
    assert padded.decide(1.0, waiting, [], late) == Launch(("a",))
    linear = known_costs(Scheduler("auto", 8, lambda r: r, pipelined=False), {1: 5.0, 2: 10.0, 8: 40.0})
    assert linear.decide(1.0, waiting, [], soon) == Launch(("a",))  # rows cost the same: never wait


def test_overlap_only_once_saturated_and_just_in_time():
    from pipeline.scheduler import Arrival

    s = known_costs(Scheduler("auto", 16, lambda r: 16 if r > 8 else 8, pipelined=True), {8: 28.0, 16: 57.0})
    four = {f"s{i}": Arrival(1.0, 1 / 30) for i in range(4)}
    waiting = [frame_in("s0", t_in=1.0)]
    assert s.decide(1.0, waiting, [1.02], four) == Collect()  # keeps up: finish first
    sixteen = {f"s{i}": Arrival(1.0, 1 / 30) for i in range(16)}  # 57 ms per 33 ms: saturated
    assert s.utilisation(1.0, sixteen) > 1
    launch_at = 1.02 - HOST_S - LAUNCH_MARGIN * s.costs.device(8)  # a margin for jittering steps
    assert s.decide(1.0, waiting, [1.02], sixteen) == Wait(pytest.approx(launch_at))
    assert s.decide(launch_at + 1e-4, waiting, [1.02], sixteen) == Launch(("s0",))
    assert s.decide(1.019, waiting, [1.02, 1.05], sixteen) == Collect()  # never three in flight


def test_a_session_flooding_frames_does_not_make_the_engine_look_saturated():
    from pipeline.scheduler import Arrival

    s = known_costs(Scheduler("auto", 8, lambda r: 8, pipelined=True), {8: 20.0})
    calm = {f"s{i}": Arrival(1.0, 1 / 30) for i in range(4)}
    flooded = {**calm, "flood": Arrival(1.0, 0.0005)}  # 2000 fps
    assert s.utilisation(1.0, calm) < 0.75
    assert s.utilisation(1.0, flooded) < 0.75  # counted as 60 fps at most
    assert s.decide(1.0, [frame_in("s0", t_in=1.0)], [1.01], flooded) == Collect()
