"""Engine faults (#15 part 4): fake backends that run out of memory, raise, hang or fail
to build, behind the real EngineClient (engine threads, supervisor, watchdog) and behind
the real server. Live sessions must get frames again, with their prompt and settings,
without being reopened; recovery times are printed for the record."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeBackend, FakeClock, FakeEngines, FakeFaults, FakeFaultyPreview
from lean_client import LeanClient, Seen
from media import MARK_Y, ClipTrack, davis_clip, ping_pong, stamp

from pipeline import supervisor
from pipeline.client import EngineClient, EngineSession, EngineUnavailable, SessionClosed
from pipeline.config import EngineConfig
from pipeline.health import EngineHealth
from pipeline.messages import EngineFailed, Event, FrameOut, PromptApplied, SessionError
from pipeline.preview import style_for_prompt, stylize_image
from pipeline.runtime import RuntimeConfig
from server.app import create_app
from server.config import ServerConfig
from server.keys import ENGINE, REGISTRY

TB = Fraction(1, 90000)
IMAGE = np.zeros((32, 32, 3), np.uint8)
FAST = {"restart_backoff_s": 0.05, "step_timeout_s": 0.5}


class Stream:
    """Feeds a session at ~100 fps and records every output and event."""

    def __init__(self, session: EngineSession) -> None:
        self.session = session
        self.outputs: list[tuple[float, FrameOut]] = []
        self.events: list[Event] = []
        self.pts = 0
        self._tasks = [asyncio.create_task(c) for c in (self._feed(), self._consume(), self._watch())]

    async def _feed(self) -> None:
        while True:
            self.pts += 1
            self.session.submit(IMAGE, self.pts, TB)
            await asyncio.sleep(0.01)

    async def _consume(self) -> None:
        try:
            while True:
                out = await self.session.recv()
                self.outputs.append((time.monotonic(), out))
        except (EngineUnavailable, SessionClosed):
            return

    async def _watch(self) -> None:
        while True:
            self.events.append(await self.session.next_event())

    async def until(self, what: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out; events {self.events[-5:]}, {len(self.outputs)} outputs")
            await asyncio.sleep(0.01)

    def frames_after(self, t: float) -> list[FrameOut]:
        return [out for at, out in self.outputs if at > t]

    def codes(self) -> list[str]:
        return [e.code for e in self.events if isinstance(e, SessionError)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_until(what: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


async def client_for(engines: FakeEngines, **runtime) -> EngineClient:
    client = EngineClient(engines.spec, runtime=RuntimeConfig(**runtime))
    client.start()
    await client.wait_ready(5)
    return client


# ---- through EngineClient ------------------------------------------------------------------------


@pytest.mark.bridge
async def test_out_of_memory_drops_frames_and_the_engine_goes_on_degraded():
    engines = FakeEngines()
    client = await client_for(engines, **FAST)
    stream = Stream(client.open_session("a", "aaa"))
    await stream.until(lambda: len(stream.outputs) >= 5)
    backend = engines.backends[0]
    assert isinstance(backend, FakeBackend)
    backend.faults.inject("oom")
    await stream.until(lambda: client.stats.transient_faults.value == 1)
    t_fault = time.monotonic()
    await stream.until(lambda: len(stream.frames_after(t_fault)) >= 5)
    assert client.health.status == "degraded" and "out of memory" in client.health.reason
    assert len(engines.backends) == 1 and client.health.restarts == 0  # no rebuild
    assert stream.codes() == [] and client.stats.frames_lost.value >= 1
    await stream.stop()
    await client.aclose()


@pytest.mark.bridge
async def test_a_fatal_error_rebuilds_the_engine_and_sessions_resume_with_prompt_and_settings():
    engines = FakeEngines(lambda n: FakeBackend(adapter=True))
    client = await client_for(engines, restart_backoff_s=1.0)  # the default backoff: a real recovery time
    a, b = client.open_session("a", "aaa"), client.open_session("b", "b")
    streams = [Stream(a), Stream(b)]
    a.set_prompt("aaaaa", 1)
    a.set_adapter_strength(0.5, 2)
    a.reseed(9, 1)
    await streams[0].until(lambda: any(isinstance(e, PromptApplied) for e in streams[0].events))
    old = engines.backends[0]
    assert isinstance(old, FakeBackend) and old.strengths == {"a": 0.5} and old.seeds == {"a": 9}
    old.fail_next_step = RuntimeError("CUDA error: an illegal memory access was encountered")
    t_fault = time.monotonic()
    await streams[0].until(lambda: "engine_restarting" in streams[0].codes())
    assert client.health.status == "restarting" and "illegal memory access" in client.health.reason
    assert client.healthy and client.state == "restarting"
    a.set_prompt("aaaaaaa", 3)  # asked while the engine is down: applied by the new one
    await streams[0].until(lambda: any(o.prompt_seq == 3 for o in streams[0].frames_after(t_fault)))
    recovered = min(at for at, o in streams[0].outputs if at > t_fault)
    new = engines.backends[1]
    assert isinstance(new, FakeBackend)
    after = streams[0].frames_after(t_fault)
    assert {(o.prompt_seq, int(o.image[0, 0, 0])) for o in after} <= {(1, 5), (3, 7)}  # exact: seq <-> prompt
    assert new.prompts == {"a": "aaaaaaa", "b": "b"} and new.strengths == {"a": 0.5}
    assert new.seeds == {"a": 9}  # a reroll survives the rebuild
    assert [e.seq for e in streams[0].events if isinstance(e, PromptApplied)] == [1, 3]
    await streams[1].until(lambda: len(streams[1].frames_after(recovered)) >= 3)
    assert "engine_restarting" in streams[1].codes()
    assert client.health.status == "degraded" and client.health.restarts == 1
    print(f"\nrecovery after a fatal engine error: {(recovered - t_fault) * 1000:.0f} ms (backoff 1.0 s)")
    for s in streams:
        await s.stop()
    await client.aclose()


@pytest.mark.bridge
async def test_a_hung_step_is_abandoned_and_a_new_engine_takes_over():
    engines = FakeEngines()
    client = await client_for(engines, **FAST)
    stream = Stream(client.open_session("a", "aaaa"))
    await stream.until(lambda: len(stream.outputs) >= 5)
    hung = engines.backends[0]
    assert isinstance(hung, FakeBackend)
    hung.faults.inject("hang")
    assert await asyncio.to_thread(hung.faults.hung.wait, 5)
    t_hang = time.monotonic()
    stuck_pts = stream.pts  # roughly the frame the hung step holds
    await stream.until(lambda: len(stream.frames_after(t_hang)) >= 5)
    recovered = min(at for at, _ in stream.outputs if at > t_hang)
    assert "engine_restarting" in stream.codes() and "hung" in client.health.reason
    assert len(engines.backends) == 2 and all(int(o.image[0, 0, 0]) == 4 for o in stream.frames_after(t_hang))
    hung_threads = [t for t in threading.enumerate() if t.name == "engine-1"]
    assert hung_threads and hung_threads[0].is_alive()  # cannot be killed: abandoned
    hung.faults.release.set()  # its step returns late: nothing it made reaches the session
    await asyncio.to_thread(hung_threads[0].join, 5)
    assert not hung_threads[0].is_alive() and hung.closed
    await asyncio.sleep(0.1)
    late = [o for o in stream.frames_after(t_hang) if o.pts <= stuck_pts - 5]
    assert late == []
    print(f"\nrecovery after a hung step: {(recovered - t_hang) * 1000:.0f} ms (step timeout 0.5 s)")
    await stream.stop()
    await client.aclose()


@pytest.mark.bridge
async def test_repeated_failures_give_up_unhealthy_and_sessions_end():
    engines = FakeEngines()
    engines.fail_builds = {1, 2}
    client = await client_for(engines, restart_limit=2, **{**FAST, "restart_backoff_s": 0.01})
    stream = Stream(client.open_session("a", "a"))
    await stream.until(lambda: len(stream.outputs) >= 3)
    backend = engines.backends[0]
    assert isinstance(backend, FakeBackend)
    backend.fail_next_step = RuntimeError("device lost")
    await stream.until(lambda: any(isinstance(e, EngineFailed) for e in stream.events))
    assert client.health.status == "unhealthy" and not client.healthy and client.state == "failed"
    assert "gave up after 2 restarts" in client.health.reason and "fake build 2 failed" in client.health.reason
    assert stream.codes().count("engine_restarting") == 2 and client.health.restarts == 2
    with pytest.raises(EngineUnavailable, match="gave up"):
        client.open_session("b", "b")
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(stream.session.recv(), 1)
    await stream.stop()
    stream.session.close()  # its owner's close still takes a failed session out of the table
    assert client._sessions == {}
    await client.aclose()


@pytest.mark.bridge
async def test_the_failure_count_starts_over_after_a_stable_run(monkeypatch):
    monkeypatch.setattr(supervisor, "STABLE_S", 0.2)
    engines = FakeEngines()
    client = await client_for(engines, restart_limit=1, **FAST)
    stream = Stream(client.open_session("a", "a"))
    for n in range(3):  # one restart allowed, three failures: each after a stable run
        await stream.until(lambda n=n: len(engines.backends) == n + 1 and client.health.running)
        await asyncio.sleep(0.3)
        engines.backends[n].fail_next_step = RuntimeError(f"fault {n}")  # type: ignore[attr-defined]
        await stream.until(lambda n=n: len(engines.backends) == n + 2 and client.health.running)
    assert client.healthy and client.health.restarts == 3
    await stream.stop()
    await client.aclose()


@pytest.mark.bridge
async def test_a_failing_first_build_is_unhealthy_at_once_and_sessions_opened_while_restarting_attach():
    engines = FakeEngines()
    engines.fail_builds = {0}
    client = EngineClient(engines.spec, runtime=RuntimeConfig(**FAST))
    client.start()
    with pytest.raises(EngineUnavailable, match="failed to start: RuntimeError: fake build 0 failed"):
        await client.wait_ready(5)
    assert client.health.restarts == 0 and client.health.status == "unhealthy"
    await client.aclose()

    engines = FakeEngines()
    client = await client_for(engines, **{**FAST, "restart_backoff_s": 0.3})
    engines.backends[0].fail_next_step = RuntimeError("boom")  # type: ignore[attr-defined]
    first = Stream(client.open_session("a", "a"))
    await first.until(lambda: client.health.status == "restarting")
    late = Stream(client.open_session("late", "lll"))  # offered while the engine is down
    await late.until(lambda: len(late.outputs) >= 3)
    assert int(late.outputs[-1][1].image[0, 0, 0]) == 3 and len(engines.backends) == 2
    for s in (first, late):
        await s.stop()
    await client.aclose()


@pytest.mark.unit
def test_health_state_machine():
    clock = FakeClock(100.0)
    health = EngineHealth(clock, degraded_s=60)
    assert (health.status, health.reason) == ("warming_up", "the engine is starting")
    health.report_progress("downloading 10%")
    assert health.snapshot()["progress"] == "downloading 10%"
    health.ready()
    assert (health.status, health.reason, health.progress) == ("ok", "", "")
    health.transient("CUDA out of memory")
    assert health.status == "degraded" and "out of memory" in health.reason
    clock.t += 61
    assert health.status == "ok" and health.transient_faults == 1
    health.restarting("hung step")
    health.report_progress("warm-up bucket 8")
    assert (health.status, health.reason, health.progress) == ("restarting", "hung step", "warm-up bucket 8")
    health.ready()
    assert health.status == "degraded" and "after a restart (hung step)" in health.reason
    health.unhealthy("gave up")
    for transition in (health.ready, health.close, lambda: health.transient("x"), lambda: health.restarting("y")):
        transition()
        assert (health.status, health.reason) == ("unhealthy", "gave up")
    assert health.snapshot() == {
        "status": "unhealthy",
        "reason": "gave up",
        "progress": None,
        "restarts": 1,
        "transient_faults": 1,
    }


# ---- through the HTTP server ---------------------------------------------------------------------


@pytest.mark.server
async def test_healthz_and_metrics_follow_the_engine_through_warm_up_restart_and_give_up():
    engines = FakeEngines()
    engines.gate = threading.Event()
    config = ServerConfig(port=0, engine=EngineConfig(kind="preview"), runtime=RuntimeConfig(restart_limit=1, **FAST))
    http = TestClient(TestServer(create_app(config, engines.spec)))
    await http.start_server()
    try:
        body = await (await http.get("/healthz")).json()
        assert body["status"] == "warming_up" and body["progress"] == "fake build 0: loading"
        engines.gate.set()
        engine = http.app[ENGINE]
        await engine.wait_ready(5)
        resp = await http.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ok" and body["reason"] is None
        session = engine.open_session("probe", "p")
        engines.fail_builds = {1}
        engines.backends[0].fail_next_step = RuntimeError("GPU fell off the bus")  # type: ignore[attr-defined]
        session.submit(IMAGE, 1, TB)
        statuses = set()
        for _ in range(300):
            resp = await http.get("/healthz")
            body = await resp.json()
            statuses.add((resp.status, body["status"]))
            metrics = await (await http.get("/metrics")).text()
            if body["status"] == "unhealthy":
                break
            await asyncio.sleep(0.01)
        assert (200, "restarting") in statuses and resp.status == 503
        assert "gave up after 1 restart:" in body["reason"] and "fake build 1 failed" in body["reason"]
        assert body["restarts"] == 1 and body["engine"]["state"] == "failed"
        assert 'livestyle_engine_health{status="unhealthy"} 1.0' in metrics
        assert 'livestyle_engine_health{status="ok"} 0.0' in metrics
        assert "livestyle_engine_restarts_total 1.0" in metrics
        assert 'livestyle_engine_health_info{reason="gave up after 1 restart:' in metrics
        resp = await http.post("/offer", json={"sdp": "v=0\r\n", "type": "offer"})
        assert resp.status == 503 and (await resp.json())["error"]["code"] == "engine_unavailable"
    finally:
        await http.close()


# ---- through the real server with a real aiortc session --------------------------------------------

PROMPT_A, PROMPT_B = "oil painting, vibrant colors", "neon cyberpunk"


def styled_like(clip: list[np.ndarray], images: list[tuple[Seen, np.ndarray]], prompt: str, other: str) -> bool:
    """The received frames look like the preview stylization of their source frames with
    `prompt`, more than with `other`."""
    errors: dict[str, list[float]] = {prompt: [], other: []}
    for seen, image in images:
        if seen.index is None:
            continue
        source = stamp(clip[seen.index % len(clip)], seen.index)
        for p in errors:
            expected = stylize_image(source, style_for_prompt(p))[:MARK_Y].astype(np.int16)
            errors[p].append(float(np.abs(image[:MARK_Y].astype(np.int16) - expected).mean()))
    assert len(errors[prompt]) >= 5, "too few stamped frames to judge the style"
    return float(np.median(errors[prompt])) < 0.6 * float(np.median(errors[other]))


@pytest.mark.webrtc
@pytest.mark.timeout(120)
async def test_video_resumes_on_the_same_connection_after_out_of_memory_a_fatal_error_and_a_hang():
    clip = ping_pong(davis_clip("blackswan"))
    faults = FakeFaults()
    engines = FakeEngines(lambda n: FakeFaultyPreview(faults, size=512, max_batch=8))
    runtime = RuntimeConfig(restart_backoff_s=0.2, step_timeout_s=1.0)
    srv = TestServer(
        create_app(ServerConfig(port=0, engine=EngineConfig(kind="preview"), runtime=runtime), engines.spec)
    )
    await srv.start_server()
    recovery: dict[str, float] = {}
    try:
        base = str(srv.make_url("")).rstrip("/")
        async with ClientSession() as http:
            client = LeanClient(base, ClipTrack(clip, fps=30), prompt=PROMPT_A, keep_images=30)
            await client.connect(http)
            await client.wait_frames(10, timeout=15)
            client.send(type="set_prompt", prompt=PROMPT_B, seq=1)
            await client.wait_message(lambda m: m["type"] == "prompt_applied" and m["seq"] == 1)
            restarts = lambda: sum(m.get("code") == "engine_restarting" for m in client.messages)  # noqa: E731
            engine = srv.app[ENGINE]
            session = srv.app[REGISTRY].get(client.answer["session_id"])
            assert session is not None
            for kind, restarted in (("oom", 0), ("raise", 1), ("hang", 2)):
                t_fault = time.monotonic()
                faults.inject(kind)  # type: ignore[arg-type]
                if kind == "oom":
                    await wait_until(lambda: engine.health.transient_faults == 1)
                else:
                    await wait_until(lambda r=restarted: engine.health.restarts == r and engine.health.running)
                served = session.engine.frames_out
                await wait_until(lambda n=served: session.engine.frames_out > n)  # the first frame after it
                recovery[kind] = time.monotonic() - t_fault
                await wait_until(lambda r=restarted: restarts() == r)  # the page was told (or not, for oom)
                await client.wait_frames(len(client.seen) + 20, timeout=15)  # and video resumed
                if kind == "hang":
                    faults.release.set()
            connection = client.pc.connectionState
            images = list(client.images)
            await client.close()
        registry = srv.app[REGISTRY]
        assert connection == "connected" and len(engines.backends) == 3  # two rebuilds, one connection
        assert registry.stats.sessions_created.value == 1  # never renegotiated
        pts = [s.pts for s in client.seen]
        assert all(b > a for a, b in itertools.pairwise(pts)), "pts must stay strictly increasing"
        assert styled_like(clip, images, PROMPT_B, PROMPT_A)  # the rebuilt engine kept the prompt
    finally:
        faults.release.set()
        await srv.close()
    print(
        "\nengine recovery behind a live WebRTC session (fault -> first stylized frame): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in recovery.items())
        + f" (backoff {runtime.restart_backoff_s:g} s, step timeout {runtime.step_timeout_s:g} s)"
    )


@pytest.mark.unit
def test_runtime_options_from_flags_and_environment_with_clear_errors():
    from pipeline.config import ConfigError
    from server.config import load_config

    assert load_config([], {}).runtime == RuntimeConfig()
    env = {"LIVESTYLE_SCHEDULE": "serial", "LIVESTYLE_STEP_TIMEOUT": "2.5", "LIVESTYLE_ENGINE_RESTARTS": "0"}
    config = load_config(["--schedule", "pipelined", "--text-budget", "4", "--restart-backoff", "0.5"], env)
    assert config.runtime == RuntimeConfig(
        schedule="pipelined", text_budget=4, step_timeout_s=2.5, restart_limit=0, restart_backoff_s=0.5
    )
    for argv, flag in (
        (["--text-budget", "0"], "--text-budget"),
        (["--step-timeout", "0"], "--step-timeout"),
        (["--engine-restarts", "-1"], "--engine-restarts"),
        (["--restart-backoff", "9999"], "--restart-backoff"),
    ):
        with pytest.raises(ConfigError, match=flag) as info:
            load_config(argv, {})
        assert argv[1] in str(info.value)  # says what was given
    with pytest.raises(ConfigError, match="LIVESTYLE_TEXT_BUDGET"):
        load_config([], {"LIVESTYLE_TEXT_BUDGET": "many"})
