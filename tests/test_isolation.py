"""Cross-session isolation: a session flooding its control channel (distinct set_prompt
messages and garbage, as fast as its data channel carries them, from its own process) must
not take the frame rate of another session. The victim's floor is relative to its own rate
in calm periods of the same test, alternating with the flood so that the load of a shared
CI machine hits both alike (no absolute speeds)."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time

import pytest
from aiohttp import ClientSession
from media import ClipTrack, LoopbackClient, davis_clip, ping_pong
from test_reaping import peer_process

from server.app import REGISTRY
from server.config import ServerConfig

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(150)]

FLOOD_RATE = 5000  # messages a second asked of the flooder; aiortc's SCTP decides what arrives
ROUNDS = 3
WINDOW_S = 2.0
FLOOR = 0.5  # of the victim's calm rate


async def fps_over(client: LoopbackClient, seconds: float) -> float:
    n, t0 = len(client.received), time.monotonic()
    await asyncio.sleep(seconds)
    return (len(client.received) - n) / (time.monotonic() - t0)


async def test_a_flooding_session_does_not_stall_another(preview_server, caplog, record_property):
    srv, base = await preview_server(max_sessions=2)
    registry = srv.app[REGISTRY]
    clip = ping_pong(davis_clip("blackswan"))
    calm, flooded, received = [], [], 0
    async with ClientSession() as http:
        victim = LoopbackClient(base, ClipTrack(clip, fps=30))
        await victim.connect(http)
        await victim.wait_frames(10, timeout=20)
        async with peer_process(base) as (proc, event):
            assert proc.stdin is not None and proc.stdout is not None
            flooder = registry.get(event["session_id"])
            assert flooder is not None

            async def steer(command: str) -> None:
                proc.stdin.write(f"{command}\n".encode())
                while json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))["event"] != command.split()[0]:
                    pass

            with caplog.at_level(logging.INFO, logger="signaling"):
                for _ in range(ROUNDS):
                    await steer("calm")
                    await asyncio.sleep(1.0)  # what was on the wire arrives
                    calm.append(await fps_over(victim, WINDOW_S))
                    await steer(f"flood {FLOOD_RATE}")
                    await asyncio.sleep(0.5)
                    before = flooder.control.received
                    flooded.append(await fps_over(victim, WINDOW_S))
                    received += flooder.control.received - before
            alive = registry.get(event["session_id"]) is flooder
            limited = flooder.control.rate_limited
        victim.send(type="ping", t=1)
        await victim.wait_message(lambda m: m["type"] == "pong")
        await victim.close()
    baseline, during = statistics.median(calm), statistics.median(flooded)
    log_lines = [r.getMessage() for r in caplog.records if r.name.startswith("signaling")]
    record_property("victim_fps_calm", round(baseline, 1))
    record_property("victim_fps_flooded", round(during, 1))
    record_property("flood_messages_per_s", round(received / (ROUNDS * WINDOW_S)))
    print(
        f"\nisolation: victim {baseline:.1f} fps calm, {during:.1f} fps flooded ({during / baseline:.0%}); "
        f"calm {[round(f, 1) for f in calm]}, flooded {[round(f, 1) for f in flooded]}; the flooder's session "
        f"got {received / (ROUNDS * WINDOW_S):.0f} control messages/s ({limited} rate-limited in all); "
        f"{len(log_lines)} signaling log lines"
    )
    assert baseline > 0.5, "the victim was not streaming"  # a floor any loaded machine meets
    # aiortc's SCTP paces the flood (hundreds to a few thousand a second, by machine load);
    # it must at least be several times what the rate limit lets through.
    allowed = ServerConfig().control_rate * ROUNDS * WINDOW_S
    assert received > 3 * allowed and limited > 0, "the flooder did not flood"
    assert alive, "the flooding session itself was dropped (it should only be rate limited)"
    assert during >= FLOOR * baseline
    assert len(log_lines) < 20, log_lines  # a summary line per interval, not a line per message
