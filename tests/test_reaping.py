"""Slots of vanished peers come back within seconds: a killed client, peers whose ICE never
completes (page, WHIP, WHEP), and the page's close beacon. Measured times are printed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection
from media import ClipTrack, LoopbackClient, davis_clip, ping_pong

from pipeline.config import ConfigError
from server.app import REGISTRY
from server.config import ServerConfig, load_config

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
REAP_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def clip():
    return ping_pong(davis_clip("blackswan"))


@asynccontextmanager
async def peer_process(base: str, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict]]:
    """tests/peer_process.py streaming to `base`; yields it and its "streaming" event. Killed on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests" / "peer_process.py"),
        base,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 45)
            assert line, f"the peer process exited with {await proc.wait()} before streaming"
            event = json.loads(line)
            if event["event"] == "streaming":
                break
        yield proc, event
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def seconds_until(predicate: Callable[[], bool], limit: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"still not true after {limit} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.webrtc
async def test_a_killed_client_frees_its_slot_within_10_s(preview_server, record_property):
    srv, base = await preview_server()
    registry = srv.app[REGISTRY]
    async with peer_process(base) as (proc, event):
        assert registry.get(event["session_id"]) is not None
        proc.kill()  # SIGKILL: no close, no BYE, no DTLS alert; the sockets just vanish
        await proc.wait()
        seconds = await seconds_until(lambda: len(registry) == 0, REAP_LIMIT_S + 5)
    record_property("killed_client_reaped_s", round(seconds, 2))
    print(f"\nkilled client: its slot was free {seconds:.1f} s after SIGKILL")
    assert seconds <= REAP_LIMIT_S


@pytest.mark.webrtc
async def test_pings_alone_or_video_alone_keep_a_session(preview_server, clip):
    """Heartbeat = control messages or video: a page whose camera stalled but that still
    pings stays, and so does a client that only sends video (like WHIP)."""
    srv, base = await preview_server(heartbeat_timeout_s=2.0)
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        pinging_track, video_only = ClipTrack(clip, fps=30), LoopbackClient(base, ClipTrack(clip, fps=30))
        pinging = LoopbackClient(base, pinging_track)
        await pinging.connect(http)
        await video_only.connect(http)
        await pinging.wait_frames(3, timeout=20)
        await video_only.wait_frames(3, timeout=20)
        pinging_track.stop()  # no more video from this one
        for second in range(5):  # 2.5 heartbeat windows
            pinging.send(type="ping", t=second)
            await asyncio.sleep(1.0)
        assert len(registry) == 2
        await asyncio.sleep(3.5)  # the pings stop too: now it is gone, the video-only one is not
        assert [s.id for s in registry._sessions.values()] == [video_only.answer["session_id"]]
        await pinging.close()
        await video_only.close()


@pytest.mark.webrtc
async def test_peers_that_never_connect_free_their_slots(preview_server, clip, record_property):
    """A page, a WHIP publisher and a WHEP viewer that get an answer but never complete ICE."""
    srv, base = await preview_server(max_viewers=1)
    registry = srv.app[REGISTRY]
    peers: list[RTCPeerConnection] = []

    async def offer(kind: str) -> str:
        pc = RTCPeerConnection()
        peers.append(pc)
        pc.addTransceiver("video", direction="recvonly" if kind == "whep" else "sendrecv")
        if kind == "browser":
            pc.createDataChannel("control")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp

    async with ClientSession() as http:
        host = LoopbackClient(base, ClipTrack(clip, fps=30))
        await host.connect(http)
        host.send(type="create_watch")
        token = (await host.wait_message(lambda m: m["type"] == "watch"))["token"]
        t0 = time.monotonic()
        sdp = await offer("browser")
        async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}) as resp:
            assert resp.status == 200, await resp.text()
        sdp = await offer("whip")
        async with http.post(f"{base}/whip", data=sdp, headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 201, await resp.text()
        sdp = await offer("whep")
        async with http.post(f"{base}/whep/{token}", data=sdp, headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 201, await resp.text()
        assert len(registry) == 3 and registry.viewer_count() == 1
        # Nobody applies the answers. The viewer seat is the only one: a second viewer is refused meanwhile.
        sdp = await offer("whep")
        async with http.post(f"{base}/whep/{token}", data=sdp, headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 503
        await seconds_until(lambda: len(registry) == 1 and registry.viewer_count() == 0, REAP_LIMIT_S + 5)
        seconds = time.monotonic() - t0  # from the first offer
        record_property("unconnected_peers_reaped_s", round(seconds, 2))
        print(f"\nunconnected page, WHIP and WHEP peers: all slots free {seconds:.1f} s after the first offer")
        assert seconds <= REAP_LIMIT_S
        assert registry.get(host.answer["session_id"]) is not None  # the connected one stays
        await host.close()
    for pc in peers:
        await pc.close()


@pytest.mark.webrtc
async def test_close_route_needs_the_sessions_secret(preview_server, clip):
    srv, base = await preview_server()
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        client = LoopbackClient(base, ClipTrack(clip, fps=30))
        await client.connect(http)
        session_id, secret = client.answer["session_id"], client.answer["close_secret"]
        url = f"{base}{client.answer['close_url']}"
        assert url.endswith(f"/session/{session_id}/close") and len(secret) >= 20
        for body in (b"", b"wrong", secret[:-1].encode(), b"\xff\xfe" * 100, session_id.encode()):
            async with http.post(url, data=body) as resp:
                assert resp.status == 404, body
                assert (await resp.json())["error"]["code"] == "not_found"
        async with http.post(f"{base}/session/nonexistent/close", data=secret) as resp:
            assert resp.status == 404
        async with http.post(url, data=b"x" * (1 << 20)) as resp:
            assert resp.status == 413
        assert registry.get(session_id) is not None
        t0 = time.monotonic()
        # What navigator.sendBeacon(url, secret) sends.
        async with http.post(url, data=secret, headers={"Content-Type": "text/plain;charset=UTF-8"}) as resp:
            assert resp.status == 204
        print(f"\nclose beacon: session gone {time.monotonic() - t0:.2f} s after the POST")
        assert registry.get(session_id) is None
        async with http.post(url, data=secret) as resp:  # already gone
            assert resp.status == 404
        await client.close()


@pytest.mark.unit
def test_liveness_and_control_options_from_flags_and_environment():
    env = {"LIVESTYLE_HEARTBEAT_TIMEOUT": "4", "LIVESTYLE_CONTROL_RATE": "5", "LIVESTYLE_CONTROL_BURST": "9"}
    config = load_config(["--connect-timeout", "3", "--control-rate", "7"], environ=env)
    assert (config.heartbeat_timeout_s, config.connect_timeout_s) == (4.0, 3.0)
    assert (config.control_rate, config.control_burst) == (7.0, 9)
    for kwargs, flag in [
        ({"heartbeat_timeout_s": 0.5}, "--heartbeat-timeout"),
        ({"connect_timeout_s": 0}, "--connect-timeout"),
        ({"control_rate": 0}, "--control-rate"),
        ({"control_burst": 0}, "--control-burst"),
    ]:
        with pytest.raises(ConfigError) as info:
            ServerConfig(**kwargs)
        assert flag in str(info.value) and str(next(iter(kwargs.values()))) in str(info.value)
