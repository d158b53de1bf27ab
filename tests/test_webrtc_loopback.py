"""Real WebRTC sessions over loopback: an aiortc client streams a DAVIS clip at
512x512 / 30 fps to the real server (preview engine) and checks what comes back."""

import asyncio
import itertools
import statistics
import threading
import time

import numpy as np
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiortc import rtcrtpreceiver
from media import MARK_Y, ClipTrack, LoopbackClient, davis_clip, ping_pong, pts_latencies, read_stamp, stamp

from bench import loopback
from bench.transport import HoldTimer
from pipeline.config import EngineConfig
from pipeline.preview import style_for_prompt, stylize_image
from server.app import REGISTRY, create_app
from server.config import ServerConfig
from signaling.encoders import RealtimeH264Encoder, RealtimeVp8Encoder
from signaling.jitter import MarkerJitterBuffer

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(120)]

PROMPT_A = "oil painting, vibrant colors"
PROMPT_B = "neon cyberpunk"
REROLL_SEED = 4  # its take of PROMPT_A is far from seed 0's (mean difference ~37 on a DAVIS frame)


@pytest.fixture(scope="module")
def clip():
    return ping_pong(davis_clip("blackswan"))


def match_quality(clip, received, prompt):
    """Per stamped frame: (error vs the locally stylized source, error vs the raw source),
    mean absolute difference outside the stamp row."""
    style = style_for_prompt(prompt)
    to_styled, to_source = [], []
    for r in received:
        index = read_stamp(r.image)
        if index is None:
            continue
        source = stamp(clip[index % len(clip)], index)
        expected = stylize_image(source, style)
        got = r.image[:MARK_Y].astype(np.int16)
        to_styled.append(np.abs(got - expected[:MARK_Y]).mean())
        to_source.append(np.abs(got - source[:MARK_Y]).mean())
    return to_styled, to_source


def frame_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("livestyle-reader", "livestyle-fanout")]


async def test_davis_clip_streams_stylized_at_speed(preview_server, clip, record_property):
    srv, base = await preview_server()
    track = ClipTrack(clip, fps=30)
    async with ClientSession() as http:
        client = LoopbackClient(base, track, prompt=PROMPT_A)
        await client.connect(http)
        await client.wait_frames(5, timeout=15)
        # The server's peer runs the marker-bit jitter buffer and the realtime encoder.
        session = srv.app[REGISTRY].get(client.answer["session_id"])
        assert session is not None
        (receiver,) = session.pc.getReceivers()
        (sender,) = session.pc.getSenders()
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
        assert isinstance(sender._RTCRtpSender__encoder, RealtimeVp8Encoder | RealtimeH264Encoder)
        assert len(frame_threads()) == 2  # the session's reader and fan-out workers
        start_count, t0 = len(client.received), time.monotonic()
        await asyncio.sleep(5.5)
        t1 = time.monotonic()
        fps = (len(client.received) - start_count) / (t1 - t0)
        sent_fps = sum(t0 <= t < t1 for t in track.sent_at.values()) / (t1 - t0)
        stats = await client.wait_message(lambda m: m["type"] == "stats" and m["fps_out"] > 0)
        await client.close()

    received = client.received
    latencies, stamped = pts_latencies(track, received)
    median_ms = statistics.median(latencies)
    record_property("fps", round(fps, 1))
    record_property("median_latency_ms", round(median_ms, 1))
    print(
        f"\nloopback: {fps:.1f} fps back of {sent_fps:.1f} sent, median send->receive {median_ms:.0f} ms, "
        f"p90 {np.percentile(latencies, 90):.0f} ms, {stamped}/{len(received)} stamps read"
    )

    # Floors a loaded 2-core machine meets (client, server and engine share it); the
    # latency is printed, not asserted: test_receive_hops_release_frames_on_their_marker
    # checks the part the transport decides.
    assert fps >= max(5.0, 0.4 * sent_fps)
    assert stamped >= len(received) * 0.5  # the pts matching is anchored by many frames
    assert len(latencies) >= len(received) * 0.9
    pts = [r.pts for r in received]
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts must be strictly increasing"
    assert all(r.image.shape == (512, 512, 3) for r in received)
    # Output looks like the preview stylization of the frame that was sent, not the frame.
    to_styled, to_source = match_quality(clip, received, PROMPT_A)
    assert statistics.median(to_styled) < 0.6 * statistics.median(to_source)
    assert statistics.median(to_source) > 15  # visibly different from the camera
    assert client.messages[0]["type"] == "hello" and client.messages[0]["engine"]["kind"] == "preview"
    assert stats["fps_in"] > 0 and stats["latency_ms"] is not None


async def test_receive_hops_release_frames_on_their_marker_packet(preview_server, clip, monkeypatch):
    """Both aiortc receivers (the server's and the client's) hand a frame to their decoder
    as its last packet arrives, not when the next frame's first packet does (aiortc's own
    rule holds each frame for about one frame interval). Timed inside the buffer, so
    a loaded machine does not blur it."""
    _, base = await preview_server()  # its start installs the marker rule
    timer = HoldTimer(rtcrtpreceiver.JitterBuffer)
    monkeypatch.setattr(rtcrtpreceiver, "JitterBuffer", timer)
    monkeypatch.setattr(loopback, "install_marker_release", lambda: True)  # keep the timer in place
    async with ClientSession() as http:
        client = LoopbackClient(base, ClipTrack(clip, fps=30), prompt=PROMPT_A)
        await client.connect(http)
        await client.wait_frames(20, timeout=20)
        await client.close()
    holds = sorted(timer.holds_ms)
    p50 = holds[len(holds) // 2]
    print(f"\nreceive hold per frame over both hops: p50 {p50:.2f} ms, max {holds[-1]:.2f} ms, {len(holds)} frames")
    assert len(holds) >= 40  # frames released by both receivers
    assert p50 < 5


async def test_set_prompt_round_trip_changes_the_output(preview_server, clip):
    _, base = await preview_server()
    track = ClipTrack(clip, fps=30)
    async with ClientSession() as http:
        client = LoopbackClient(base, track, prompt=PROMPT_A)
        await client.connect(http)
        await client.wait_frames(10, timeout=15)
        t_send = time.monotonic()
        client.send(type="set_prompt", prompt=PROMPT_B, seq=1)
        applied = await client.wait_message(lambda m: m["type"] == "prompt_applied")
        round_trip_ms = (time.monotonic() - t_send) * 1000
        n_switch = len(client.received)
        await asyncio.sleep(1.5)
        await client.close()
    print(f"\nprompt applied: server {applied['latency_ms']} ms, round trip {round_trip_ms:.0f} ms")
    assert applied["seq"] == 1 and 0 < applied["latency_ms"] < 500
    assert round_trip_ms < 1000
    before = client.received[max(0, n_switch - 10) : n_switch - 2]
    after = client.received[n_switch + 8 :]
    a_styled, _ = match_quality(clip, after, PROMPT_B)
    a_old, _ = match_quality(clip, after, PROMPT_A)
    b_styled, _ = match_quality(clip, before, PROMPT_A)
    assert a_styled and b_styled
    assert statistics.median(a_styled) < 0.6 * statistics.median(a_old)  # now looks like the new prompt
    colour = lambda frames: np.mean([f.image[:MARK_Y].reshape(-1, 3).mean(0) for f in frames], 0)  # noqa: E731
    assert np.abs(colour(after) - colour(before)).max() > 10  # and visibly changed


def style_distance(clip, received, style) -> float:
    """Median mean-absolute difference of the stamped frames to `style`'s rendering."""
    errors = []
    for r in received:
        index = read_stamp(r.image)
        if index is not None:
            expected = stylize_image(stamp(clip[index % len(clip)], index), style)
            errors.append(np.abs(r.image[:MARK_Y].astype(np.int16) - expected[:MARK_Y]).mean())
    assert errors, "no stamped frames"
    return statistics.median(errors)


async def test_reroll_picks_a_seed_says_which_and_the_frames_follow_it(preview_server, clip):
    _, base = await preview_server()
    async with ClientSession() as http:
        client = LoopbackClient(base, ClipTrack(clip, fps=30), prompt=PROMPT_A)
        await client.connect(http)
        await client.wait_frames(10, timeout=15)
        client.send(type="reroll", seq=1)  # the server picks the seed
        picked = await client.wait_message(lambda m: m["type"] == "seed")
        client.send(type="reroll", seq=2, seed=REROLL_SEED)  # a take the test knows is far from seed 0's
        reply = await client.wait_message(lambda m: m["type"] == "seed" and m["seq"] == 2)
        n_switch = len(client.received)
        await client.wait_frames(n_switch + 20, timeout=15)
        await client.close()
    assert picked["seq"] == 1 and 1 <= picked["seed"] < 2**31
    assert reply["seed"] == REROLL_SEED
    after = client.received[n_switch + 8 :]
    new, old = style_for_prompt(PROMPT_A, REROLL_SEED), style_for_prompt(PROMPT_A)
    to_new, to_old = style_distance(clip, after, new), style_distance(clip, after, old)
    print(f"\nreroll: seed {reply['seed']}, distance to the new take {to_new:.1f}, to the old {to_old:.1f}")
    assert to_new < 0.6 * to_old


async def test_bad_control_messages_get_errors_and_the_session_survives(preview_server, clip):
    _, base = await preview_server()
    async with ClientSession() as http:
        client = LoopbackClient(base, ClipTrack(clip, fps=30), prompt=PROMPT_A)
        await client.connect(http)
        client.channel.send("{definitely not json")
        err = await client.wait_message(lambda m: m["type"] == "error")
        assert err["code"] == "bad_json"
        client.send(type="teleport")
        err = await client.wait_message(lambda m: m["type"] == "error" and m["code"] == "unknown_type")
        client.send(type="set_prompt", prompt="x" * 501, seq=9)
        err = await client.wait_message(lambda m: m["type"] == "error" and m["code"] == "prompt_too_long")
        assert err["seq"] == 9
        client.send(type="set_adapter_strength", value=0.5, seq=10)
        err = await client.wait_message(lambda m: m["type"] == "error" and m["code"] == "adapter_unavailable")
        assert err["seq"] == 10 and "--lllite" in err["message"]
        client.send(type="set_adapter_strength", value=9, seq=11)
        err = await client.wait_message(lambda m: m["type"] == "error" and m["code"] == "bad_value")
        assert err["seq"] == 11
        client.send(type="ping", t=123.5)
        pong = await client.wait_message(lambda m: m["type"] == "pong")
        assert pong["t"] == 123.5
        n = len(client.received)
        await client.wait_frames(n + 10, timeout=10)  # still streaming
        await client.close()


async def test_vanished_and_silent_clients_are_reaped(preview_server, clip):
    srv, base = await preview_server(idle_timeout_s=1.0)
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        gone = LoopbackClient(base, ClipTrack(clip, fps=30))
        await gone.connect(http)
        await gone.wait_frames(3, timeout=15)
        silent_track = ClipTrack(clip, fps=30)
        silent = LoopbackClient(base, silent_track)
        await silent.connect(http)
        await silent.wait_frames(3, timeout=15)
        assert len(registry) == 2
        await gone.close()  # the browser tab closed
        silent_track.stop()  # the camera stopped, the connection stays up
        deadline = time.monotonic() + 10
        while len(registry) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(registry) == 0
        assert frame_threads() == []  # each closed session took its worker threads with it
        await silent.close()


@pytest.mark.diffusion
async def test_tiny_diffusion_engine_behind_the_same_server(clip):
    """The diffusion engine slots in behind the unchanged server/signaling code."""
    config = EngineConfig(kind="diffusion", model="tiny", device="cpu", max_batch=1)
    srv = TestServer(create_app(ServerConfig(port=0, engine=config)))
    await srv.start_server()
    try:
        base = str(srv.make_url("")).rstrip("/")
        async with ClientSession() as http:
            client = LoopbackClient(base, ClipTrack(clip, fps=30), prompt=PROMPT_A)
            await client.connect(http)
            hello = await client.wait_message(lambda m: m["type"] == "hello", timeout=30)
            assert hello["engine"]["kind"] == "diffusion" and hello["engine"]["model"] == "tiny"
            await client.wait_frames(3, timeout=60)
            client.send(type="set_prompt", prompt=PROMPT_B, seq=1)
            applied = await client.wait_message(lambda m: m["type"] == "prompt_applied", timeout=30)
            assert applied["seq"] == 1
            await client.close()
        assert all(r.image.shape == (512, 512, 3) for r in client.received)
        pts = [r.pts for r in client.received]
        assert all(b > a for a, b in itertools.pairwise(pts))
    finally:
        await srv.close()
