"""One engine, several processes (pipeline.host / pipeline.remote): a media process's
EngineClient feeds an engine that another process runs, over a Unix socket. Here both ends
run in one event loop (the wire is the same); test_engine_host_processes.py runs them as
real `livestyle serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import wire
from pipeline.client import EngineClient, EngineUnavailable
from pipeline.config import EngineConfig
from pipeline.engines import preview_spec
from pipeline.host import EngineHost, EngineHostError, HostLimits
from pipeline.messages import PromptApplied, SessionError
from pipeline.remote import RemoteLink, remote_spec
from pipeline.runtime import RuntimeConfig

pytestmark = [pytest.mark.bridge, pytest.mark.timeout(60)]

TB = Fraction(1, 90000)
SIZE = 128


def frame(i: int) -> np.ndarray:
    image = np.zeros((48, 80, 3), np.uint8)
    image[..., 0] = (i * 7) % 256
    image[:, : 1 + i % 80, 1] = 200
    return image


class Rig:
    """An engine process's client and host, and a media process's remote client, in one loop."""

    def __init__(self, path: str, limits: HostLimits | None = None, runtime: RuntimeConfig | None = None) -> None:
        self.path, self.limits, self.runtime = path, limits, runtime
        self.engine: EngineClient | None = None
        self.host: EngineHost | None = None
        self.media = EngineClient(remote_spec(path, SIZE, 200), link=RemoteLink.factory(path))

    async def start_host(self) -> None:
        config = EngineConfig(kind="preview", size=SIZE)
        self.engine = EngineClient(preview_spec(config, "test"), runtime=self.runtime)
        self.engine.start()
        await self.engine.wait_ready(10)
        self.host = EngineHost(self.engine, self.path, self.limits)
        await self.host.start()

    async def stop_host(self) -> None:
        assert self.host is not None and self.engine is not None
        await self.host.aclose()
        await self.engine.aclose()

    async def aclose(self) -> None:
        await self.media.aclose()
        if self.host is not None:
            await self.stop_host()


@contextlib.asynccontextmanager
async def started(limits: HostLimits | None = None, runtime: RuntimeConfig | None = None):
    """A rig with both ends up and connected; closed on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        r = Rig(os.path.join(tmp, "engine.sock"), limits, runtime)
        await r.start_host()
        r.media.start()
        await r.media.wait_ready(10)
        try:
            yield r
        finally:
            await r.aclose()


@pytest.fixture
async def rig():
    async with started() as r:
        yield r


async def stream(session, n: int, start: int = 0, timeout: float = 10.0) -> list:
    """Submit frames one at a time and collect what comes back."""
    out = []
    for i in range(start, start + n):
        session.submit(frame(i), i * 3000, TB)
        out.append(await asyncio.wait_for(session.recv(), timeout))
    return out


async def event_of(session, kind, timeout: float = 10.0):
    while True:
        event = await asyncio.wait_for(session.next_event(), timeout)
        if isinstance(event, kind):
            return event


async def test_frames_and_prompts_cross_the_process_boundary(rig):
    assert rig.media.state == "ready"
    assert rig.media.info == rig.engine.info  # the engine process's own description
    session = rig.media.open_session("a", "oil painting")
    out = await stream(session, 5)
    assert [f.pts for f in out] == [i * 3000 for i in range(5)] and all(f.time_base == TB for f in out)
    assert all(f.image.shape == (SIZE, SIZE, 3) and f.image.dtype == np.uint8 for f in out)
    assert all(f.session_id == "a" and f.t_out >= f.t_in for f in out)
    # The same frame stylized in-process and across the socket: the same pixels.
    local = rig.engine.open_session("local", "oil painting")
    assert np.array_equal((await stream(local, 1, start=4))[0].image, out[-1].image)
    local.close()
    session.set_prompt("watercolor", seq=1)
    for i in range(5, 40):
        session.submit(frame(i), i * 3000, TB)
        got = await asyncio.wait_for(session.recv(), 10)
        if got.prompt_seq == 1:
            break
    assert got.prompt_seq == 1 and session.prompt == "watercolor"
    assert (await event_of(session, PromptApplied)).seq == 1
    session.close()
    await asyncio.sleep(0.2)
    assert rig.engine._sessions == {}  # the engine process let go of it too
    stats = rig.media.stats  # this process's own /metrics see its frames
    assert stats.frames_in.value >= 6 and 0 < stats.frames_out.value <= stats.frames_in.value
    assert stats.frame_latency_ms.snapshot()[2] == stats.frames_out.value


async def test_each_media_process_sees_only_its_own_sessions(rig):
    other = EngineClient(remote_spec(rig.path, SIZE, 200), link=RemoteLink.factory(rig.path))
    other.start()
    await other.wait_ready(10)
    try:
        mine, theirs = rig.media.open_session("same-id", "oil painting"), other.open_session("same-id", "ink")
        first, second = await stream(mine, 2), await stream(theirs, 2)
        assert len(first) == len(second) == 2
        assert not np.array_equal(first[-1].image, second[-1].image)  # different prompts, not mixed up
        theirs.close()
        assert len(await stream(mine, 3, start=2)) == 3  # closing theirs left mine alone
    finally:
        await other.aclose()


async def test_lost_engine_process_means_restarting_then_resume_with_the_prompt(rig):
    session = rig.media.open_session("a", "oil painting")
    session.set_prompt("watercolor", seq=1)
    await stream(session, 2)
    assert (await event_of(session, PromptApplied)).seq == 1
    await rig.stop_host()
    error = await event_of(session, SessionError)
    assert error.code == "engine_restarting" and "lost the engine process" in error.message
    assert rig.media.state == "restarting" and rig.media.healthy
    session.submit(frame(9), 9 * 3000, TB)  # nowhere to go: dropped, never raises
    await rig.start_host()
    for _ in range(100):
        if rig.media.state == "ready":
            break
        await asyncio.sleep(0.05)
    assert rig.media.state == "ready" and rig.media.health.restarts == 1
    out = await stream(session, 3, start=10)
    assert [f.pts for f in out] == [i * 3000 for i in range(10, 13)]
    assert out[-1].prompt_seq == 1  # re-attached with the prompt it had asked for
    assert list(rig.engine._sessions) == ["m1/a"]


async def raw_connection(path: str):
    reader, writer = await asyncio.open_unix_connection(path)
    header, _ = await wire.read_message(reader)
    assert header["t"] == "hello"
    return reader, writer


async def closed_by_host(reader: asyncio.StreamReader) -> bool:
    try:
        while True:
            await asyncio.wait_for(wire.read_message(reader), 5)
    except (asyncio.IncompleteReadError, ConnectionError):
        return True


MALFORMED = [
    struct.pack("!II", 0, 0),  # empty header
    struct.pack("!II", wire.MAX_HEADER_BYTES + 1, 0),
    struct.pack("!II", 10, wire.MAX_PAYLOAD_BYTES + 1),
    struct.pack("!II", 4, 0) + b"\xff\xfe{}",
    struct.pack("!II", 2, 0) + b"[]",
    *(
        b"".join(wire.encode(h, p))
        for h, p in [
            ({"t": "frame", "sid": "x", "pts": 0, "tb": [1, 90000], "shape": [2, 2, 3], "t_in": 0.0}, b"\0" * 11),
            ({"t": "frame", "sid": "x", "pts": 0, "tb": [0, 1], "shape": [2, 2, 3], "t_in": 0.0}, b"\0" * 12),
            ({"t": "frame", "sid": "x", "pts": True, "tb": [1, 1], "shape": [2, 2, 3], "t_in": 0.0}, b"\0" * 12),
            ({"t": "open", "sid": "", "prompt": "a"}, b""),
            ({"t": "open", "sid": "x" * 201, "prompt": "a"}, b""),
            ({"t": "open", "sid": "x", "prompt": 5}, b""),
            ({"t": "prompt", "sid": "x", "prompt": "a", "seq": "1"}, b""),
            ({"t": "close", "sid": "x"}, b"payload"),
            ({"t": "shutdown", "sid": "x", "seq": 1}, b""),
        ]
    ),
]


@pytest.mark.parametrize("message", MALFORMED, ids=range(len(MALFORMED)))
async def test_a_malformed_message_closes_that_connection_only(rig, message):
    session = rig.media.open_session("a", "oil painting")
    await stream(session, 1)
    reader, writer = await raw_connection(rig.path)
    writer.write(b"".join(wire.encode({"t": "open", "sid": "x", "prompt": "ink", "seq": 0})) + message)
    assert await closed_by_host(reader)
    writer.close()
    await asyncio.sleep(0.1)
    assert list(rig.engine._sessions) == ["m1/a"]  # the raw connection's session went with it
    assert len(await stream(session, 3, start=1)) == 3 and rig.media.state == "ready"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300))
async def test_random_bytes_never_hurt_the_engine_or_another_process(rig, garbage):
    # hypothesis runs the examples in one event loop: the rig (and its session) is shared.
    session = rig.media._sessions.get("fuzz") or rig.media.open_session("fuzz", "oil painting")
    _, writer = await raw_connection(rig.path)
    writer.write(garbage)
    await writer.drain()
    writer.close()  # end of stream mid-message, or after a complete one: either way it ends
    await asyncio.sleep(0)
    assert len(await stream(session, 1)) == 1
    assert rig.engine.healthy and set(rig.engine._sessions) <= {"m1/fuzz", *(f"m{i}/x" for i in range(300))}


async def test_a_process_that_stops_reading_gets_drops_not_a_growing_buffer():
    async with started(HostLimits(max_buffered_bytes=256 * 1024)) as r:
        _, writer = await raw_connection(r.path)
        writer.write(b"".join(wire.encode({"t": "open", "sid": "slow", "prompt": "ink", "seq": 0})))
        image = frame(1)
        for i in range(300):  # never reads a byte of the answers
            header = {"t": "frame", "sid": "slow", "pts": i, "tb": [1, 30], "t_in": 0.0, "shape": [48, 80, 3]}
            writer.write(b"".join(wire.encode(header, image.tobytes())))
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        conn = next(c for c in r.host._connections if c.name == "m2")  # the raw connection
        buffered = conn.stream.buffered()
        assert r.host.frames_dropped > 0
        assert buffered <= 256 * 1024 + SIZE * SIZE * 3 + 1024  # the limit plus the frame that crossed it
        session = r.media.open_session("fast", "oil painting")  # the other process is not held up
        assert len(await stream(session, 5)) == 5
        # Still connected and still not reading: shutting the host down must not wait for it.
    writer.close()


async def test_too_many_sessions_from_one_process_are_refused_one_by_one():
    async with started(HostLimits(max_sessions=2)) as r:
        sessions = [r.media.open_session(f"s{i}", "ink") for i in range(3)]
        error = await event_of(sessions[2], SessionError)
        assert error.code == "session_failed" and "2 sessions" in error.message
        assert [len(await stream(s, 2)) for s in sessions[:2]] == [2, 2]


async def test_the_engine_process_giving_up_ends_the_sessions():
    async with started() as r:
        session = r.media.open_session("a", "ink")
        await stream(session, 1)
        r.engine._supervisor._give_up("test: the GPU is gone")
        with pytest.raises(Exception, match="GPU is gone"):
            await asyncio.wait_for(session.recv(), 5)
        for _ in range(40):
            if not r.media.healthy:
                break
            await asyncio.sleep(0.05)
        assert r.media.state == "failed" and "GPU is gone" in r.media.health.reason


async def test_media_processes_past_the_limit_are_refused():
    async with started(HostLimits(max_connections=1)) as r:
        reader, writer = await asyncio.open_unix_connection(r.path)
        with pytest.raises(asyncio.IncompleteReadError):
            await asyncio.wait_for(wire.read_message(reader), 5)  # closed without a hello
        writer.close()
        assert r.host.connections == 1 and len(await stream(r.media.open_session("a", "ink"), 2)) == 2


async def test_an_engine_rebuild_in_the_engine_process_reaches_the_media_process_once():
    async with started(runtime=RuntimeConfig(restart_backoff_s=0.2)) as r:
        session = r.media.open_session("a", "ink")
        session.set_prompt("watercolor", seq=1)
        await stream(session, 2)
        supervisor = r.engine._supervisor
        supervisor._failed(supervisor.bridge, "test: an injected fatal error")  # as a crashed step does
        error = await event_of(session, SessionError)
        assert error.code == "engine_restarting" and "injected" in error.message
        for _ in range(100):  # the engine process rebuilds; its health crosses over
            if r.media.state == "ready" and r.media.health.restarts == 1:
                break
            await asyncio.sleep(0.05)
        assert r.media.health.status == "degraded" and r.media.health.restarts == 1
        out = await stream(session, 3, start=5)
        assert out[-1].prompt_seq == 1 and [f.pts for f in out] == [15000, 18000, 21000]
        later = list(session._events._items)  # the rebuild was told once, not once per layer
        assert not [e for e in later if isinstance(e, SessionError) and e.code == "engine_restarting"], later


async def test_sessions_that_come_and_go_leave_nothing_in_the_engine_process(rig):
    tasks0 = len(asyncio.all_tasks())
    for i in range(40):
        session = rig.media.open_session(f"s{i}", f"style {i}")
        await stream(session, 1, start=i)
        if i % 3:
            session.set_prompt("ink", seq=1)
        session.close()
    await asyncio.sleep(0.3)
    (conn,) = rig.host._connections
    assert conn.streams == {} and rig.engine._sessions == {} and rig.media._sessions == {}
    assert len(asyncio.all_tasks()) <= tasks0


async def fake_engine_process(path: str, hello: list[bytes | memoryview] | None):
    """A Unix socket server that sends `hello` (or nothing) and hangs up: counts connections."""
    accepted = []

    async def serve(reader, writer):
        accepted.append(time.monotonic())
        if hello is not None:
            writer.writelines(hello)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path), accepted


async def test_an_engine_process_that_hangs_up_at_once_is_retried_with_backoff_not_hammered():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "engine.sock")
        server, accepted = await fake_engine_process(path, None)
        media = EngineClient(remote_spec(path, SIZE, 200), link=RemoteLink.factory(path))
        media.start()
        try:
            await asyncio.sleep(3.0)
            # 0.1 + 0.2 + 0.5 + 1.0 + 2.0 ... s apart: a handful, not thousands.
            assert 3 <= len(accepted) <= 6, len(accepted)
            assert media.state == "warming_up" and media.health.restarts == 0  # never served: not a loss
        finally:
            await media.aclose()
            server.close()


async def test_another_wire_version_gives_up_with_a_clear_reason():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "engine.sock")
        config = EngineConfig(kind="preview", size=SIZE)
        hello = wire.encode({"t": "hello", "version": wire.WIRE_VERSION + 1, "info": {}, "health": {}})
        server, accepted = await fake_engine_process(path, hello)
        media = EngineClient(remote_spec(path, config.size, 200), link=RemoteLink.factory(path))
        media.start()
        try:
            with pytest.raises(EngineUnavailable, match="same livestyle release"):
                await media.wait_ready(5)
            await asyncio.sleep(0.5)
            assert media.state == "failed" and len(accepted) == 1
        finally:
            await media.aclose()
            server.close()


async def test_an_engine_host_never_replaces_a_file_or_a_live_host(tmp_path):
    path = tmp_path / "engine.sock"
    path.write_text("someone's notes")
    engine = EngineClient(preview_spec(EngineConfig(kind="preview", size=SIZE), "test"))
    engine.start()
    try:
        with pytest.raises(EngineHostError, match=r"--engine-host .* is not a socket: not replacing it"):
            await EngineHost(engine, str(path)).start()
        assert path.read_text() == "someone's notes"
        path.unlink()
        first = EngineHost(engine, str(path))
        await first.start()
        with pytest.raises(EngineHostError, match="another engine host is listening there"):
            await EngineHost(engine, str(path)).start()
        _, writer = await raw_connection(str(path))  # the first one still answers
        writer.close()
        await first.aclose()
        with pytest.raises(EngineHostError, match=r"--engine-host .*cannot listen there .*existing directory"):
            await EngineHost(engine, str(tmp_path / "missing" / "engine.sock")).start()
    finally:
        await engine.aclose()
