"""EngineClient + EngineBridge with a real engine thread and a FakeBackend."""

import asyncio
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from fakes import FakeBackend, fake_spec

from pipeline.client import EngineClient, EngineSpec, EngineUnavailable
from pipeline.core import EngineCore
from pipeline.messages import EngineFailed, PromptApplied, SessionError
from pipeline.runtime import RuntimeConfig

pytestmark = pytest.mark.bridge

TB = Fraction(1, 90000)
IMAGE = np.zeros((32, 32, 3), np.uint8)


async def started(backend: FakeBackend, **runtime) -> EngineClient:
    client = EngineClient(fake_spec(backend), runtime=RuntimeConfig(**runtime))
    client.start()
    await client.wait_ready(5)
    return client


async def test_latest_frame_wins_under_a_slow_engine_without_latency_growth():
    backend = FakeBackend(step_delay=0.05)  # 20 steps/s
    client = await started(backend)
    session = client.open_session("s", "p")
    latencies: list[float] = []

    async def consume():
        while True:
            out = await session.recv()
            latencies.append((time.monotonic() - out.t_in) * 1000)

    consumer = asyncio.create_task(consume())
    t0 = time.monotonic()
    pts = 0
    while time.monotonic() - t0 < 1.5:  # feed at ~200 fps, 10x what the engine can do
        pts += 450
        session.submit(IMAGE, pts, TB)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.15)
    consumer.cancel()
    await client.aclose()

    assert session.frames_in > 150
    assert session.dropped_in > session.frames_in * 0.6  # overwritten, not queued
    # At most the engine's 30 steps; fewer on a loaded machine, never none.
    assert 8 <= len(latencies) <= 40
    third = len(latencies) // 3
    early, late = np.median(latencies[:third]), np.median(latencies[-third:])
    # A queue would grow by ~9 frames (450 ms) per step, over a second by the end; the
    # slot keeps it about one step plus one wait (~75 ms; margin for a loaded machine).
    assert late < 400, f"latency grew: {latencies}"
    assert late < early + 250


async def test_sessions_are_batched_together():
    backend = FakeBackend(step_delay=0.02)
    client = await started(backend)
    sessions = [client.open_session(f"s{i}", "p") for i in range(3)]
    for _ in range(10):
        for s in sessions:
            s.submit(IMAGE, 1, TB)
        await asyncio.sleep(0.03)
    await client.aclose()
    assert max(len(b) for b in backend.batches) == 3
    assert all(len(set(b)) == len(b) for b in backend.batches)  # never two frames of one session


async def test_prompts_apply_in_order_and_report_latency():
    backend = FakeBackend(step_delay=0.01)
    client = await started(backend)
    session = client.open_session("s", "a")
    seen_seqs: list[int] = []
    for seq, prompt in enumerate(["bb", "ccc", "dddd"], start=1):
        session.set_prompt(prompt, seq)
    session.submit(IMAGE, 1, TB)
    out = await asyncio.wait_for(session.recv(), 2)
    seen_seqs.append(out.prompt_seq)
    assert int(out.image[0, 0, 0]) == 4  # the newest prompt, never an older one
    event = await asyncio.wait_for(session.next_event(), 2)
    assert isinstance(event, PromptApplied) and event.seq == 3 and event.latency_ms > 0
    session.set_prompt("x" * 500, 4)  # over the fake's 50-char budget
    error = await asyncio.wait_for(session.next_event(), 2)
    assert isinstance(error, SessionError) and error.code == "prompt_too_long" and error.seq == 4
    session.submit(IMAGE, 2, TB)
    assert int((await asyncio.wait_for(session.recv(), 2)).image[0, 0, 0]) == 4
    await client.aclose()


async def test_engine_failure_with_restarts_off_reaches_sessions_and_health():
    backend = FakeBackend()
    client = await started(backend, restart_limit=0)
    session = client.open_session("s", "p")
    backend.fail_next_step = RuntimeError("CUDA out of memory")
    session.submit(IMAGE, 1, TB)
    event = await asyncio.wait_for(session.next_event(), 2)
    assert isinstance(event, EngineFailed) and "out of memory" in event.message
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(session.recv(), 2)
    for _ in range(100):
        if client.state == "failed":
            break
        await asyncio.sleep(0.01)
    assert client.state == "failed" and not client.healthy
    with pytest.raises(EngineUnavailable, match="out of memory"):
        client.open_session("t", "p")
    await client.aclose()
    assert backend.closed


async def test_warmup_state_and_warmup_failure():
    backend = FakeBackend()
    backend.warmup_gate = threading.Event()
    client = EngineClient(fake_spec(backend))
    client.start()
    await asyncio.sleep(0.05)
    assert client.state == "warming_up" and client.healthy
    backend.fail_warmup = RuntimeError("no weights")
    backend.warmup_gate.set()
    with pytest.raises(EngineUnavailable, match="no weights"):
        await client.wait_ready(5)
    assert client.state == "failed"
    await client.aclose()


async def test_aclose_stops_the_thread_and_closes_sessions():
    backend = FakeBackend()
    client = await started(backend)
    session = client.open_session("s", "p")
    engine_threads = lambda: [t for t in threading.enumerate() if t.name.startswith("engine")]  # noqa: E731
    assert len(engine_threads()) == 1
    await client.aclose()
    assert engine_threads() == []
    assert backend.closed and client.state == "closed"
    with pytest.raises(Exception):  # noqa: B017 - SessionClosed
        await asyncio.wait_for(session.recv(), 1)


async def test_pipelined_core_adds_no_latency_when_idle():
    """With nothing new to launch, the bridge collects the batch in flight at once."""
    backend = FakeBackend(step_delay=0.0)
    backend.pipelined = True
    client = await started(backend)
    session = client.open_session("s", "p")
    latencies = []
    for k in range(5):
        session.submit(IMAGE, k, TB)
        out = await asyncio.wait_for(session.recv(), 2)
        latencies.append((time.monotonic() - out.t_in) * 1000)
        await asyncio.sleep(0.4)
    await client.aclose()
    # Collected only when the next batch launches, a frame would wait for the next submit
    # (>= 400 ms, or for ever after the last one); at once it takes a few ms.
    assert max(latencies) < 200, latencies


async def test_a_prompt_flood_is_coalesced_and_the_victim_keeps_streaming():
    """5000 distinct prompts from one session in a burst: the engine takes a handful (the
    newest each time it looks), the other session's frames keep coming, and the flooder
    gets prompt_applied for its last seq with a frame made with that prompt."""
    backend = FakeBackend(step_delay=0.005)
    client = await started(backend)
    victim, flood = client.open_session("victim", "vv"), client.open_session("flood", "f")
    got: list[float] = []

    async def watch():
        while True:
            await victim.recv()
            got.append(time.monotonic())

    watcher = asyncio.create_task(watch())
    for k in range(10):
        victim.submit(IMAGE, k, TB)
        await asyncio.sleep(0.01)
    before = len(got)
    t0 = time.monotonic()
    for seq in range(1, 5001):
        flood.set_prompt("p" * (1 + seq % 40), seq)
        if seq % 500 == 0:  # the flood interleaves with the victim's camera
            victim.submit(IMAGE, 100 + seq, TB)
            flood.submit(IMAGE, 100 + seq, TB)
            await asyncio.sleep(0)
    for k in range(20):
        victim.submit(IMAGE, 20_000 + k, TB)
        flood.submit(IMAGE, 20_000 + k, TB)
        await asyncio.sleep(0.01)
    events = []
    while not any(isinstance(e, PromptApplied) and e.seq == 5000 for e in events):
        events.append(await asyncio.wait_for(flood.next_event(), 5))
    out = await asyncio.wait_for(flood.recv(), 2)
    watcher.cancel()
    await client.aclose()
    print(f"\nflood: engine took {backend.set_prompt_calls} of 5000 prompts; victim {len(got) - before} frames")
    assert backend.set_prompt_calls < 100
    assert client.stats.prompts_coalesced.value > 4900
    assert out.prompt_seq == 5000 and int(out.image[0, 0, 0]) == 1 + 5000 % 40
    assert len(got) - before >= 15  # the victim streamed on through the flood
    gaps = np.diff([t for t in got if t >= t0])
    assert gaps.max() < 1.0, gaps.max()


async def test_warmup_progress_reaches_the_loop_latest_first():
    backend = FakeBackend()
    gate = threading.Event()
    seen: list[str] = []

    def build(stats, progress):
        for pct in range(0, 101, 5):
            progress(f"downloading weights {pct}%")
        gate.wait(5)
        return EngineCore(backend, stats)

    client = EngineClient(EngineSpec(info=backend.info, build=build))
    client.start()
    for _ in range(200):
        if client.health.progress:
            seen.append(client.health.progress)
        if seen and seen[-1].endswith("100%"):
            break
        await asyncio.sleep(0.01)
    assert client.state == "warming_up" and client.health.status == "warming_up"
    assert seen[-1] == "downloading weights 100%"
    gate.set()
    await client.wait_ready(5)
    assert client.health.status == "ok" and client.health.progress == ""
    await client.aclose()
