"""A fleet of three `livestyle serve` processes on loopback, as three pods of a StatefulSet
(preview engine, pod names set, a --peer map standing in for the headless Service's DNS):
readiness follows the free slots, a watch link works through any pod, WHIP control requests
reach their owner, a pod that is gone answers "stream ended", and a drain tells its sessions
to move."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import pytest
from aiohttp import ClientSession
from http_support import SdpPeer
from media import MARK_Y, ClipTrack, LoopbackClient, davis_clip, ping_pong

from bench.serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(150)]

PODS = ("ls-0", "ls-1", "ls-2")
ADMIN = "admin-token-0123456789"
PEER_SECRET = "peer-secret-0123456789"


@pytest.fixture(scope="module")
def clip():
    return ping_pong(davis_clip("blackswan"))


@pytest.fixture
def fleet(tmp_path):
    ports = {pod: free_port() for pod in PODS}
    peers = ",".join(f"{pod}=http://127.0.0.1:{port}" for pod, port in ports.items())
    env = {
        **os.environ,
        "LIVESTYLE_PEERS": peers,
        "LIVESTYLE_ADMIN_TOKEN": ADMIN,
        "LIVESTYLE_PEER_SECRET": PEER_SECRET,
        "LIVESTYLE_DRAIN_GRACE": "1",
    }
    procs = {}
    for pod, port in ports.items():
        argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--engine", "preview", "--max-sessions", "1", "--pod-name", pod, "--log-level", "info"]
        procs[pod] = ServeProcess(argv, {**env}, tmp_path / f"{pod}.log")
        procs[pod].start()
    try:
        for pod, proc in procs.items():
            record = proc.wait_ready(60)
            assert "error" not in record, (pod, record)
        yield {pod: proc.url for pod, proc in procs.items()}, procs
    finally:
        for proc in procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.terminate()
        for proc in procs.values():
            if proc.proc is not None:
                try:
                    proc.proc.wait(10)
                except Exception:  # noqa: BLE001 - a stuck child: kill it, the test has its answer
                    proc.proc.kill()


async def ready(http, url) -> tuple[int, dict]:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def free_slots(http, url) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("livestyle_free_slots ")))


async def test_three_pods_route_watch_links_whip_control_and_drain(fleet, clip):
    urls, procs = fleet
    async with ClientSession() as http:
        answers = [await ready(http, urls[p]) for p in PODS]
        assert answers[0] == (
            200,
            {"ready": True, "reason": "ready", "free_slots": 1, "sessions": 0, "capacity": 1, "pod": "ls-0"},
        )
        assert [body["pod"] for status, body in answers if status == 200] == list(PODS)

        # Fill ls-0: it stops being ready (a Service sends no more offers there).
        source = LoopbackClient(urls["ls-0"], ClipTrack(clip, fps=30), prompt="neon cyberpunk")
        await source.connect(http)
        assert source.answer["session_id"].startswith("ls-0.")
        await source.wait_frames(3)
        status, body = await ready(http, urls["ls-0"])
        assert (status, body["reason"], body["free_slots"]) == (503, "full", 0)
        assert (await ready(http, urls["ls-1"]))[0] == 200
        assert await free_slots(http, urls["ls-0"]) == 0 and await free_slots(http, urls["ls-1"]) == 1

        source.send(type="create_watch")
        watch = await source.wait_message(lambda m: m["type"] == "watch" and m["token"])
        token = watch["token"]
        assert token.startswith("ls-0.") and watch["path"] == f"/watch/{token}"

        # The watch link through other pods: the page, then WHEP signaling forwarded to ls-0.
        async with http.get(f"{urls['ls-2']}{watch['path']}") as page:
            assert page.status == 200 and "livestyle" in await page.text()
        watcher = SdpPeer()
        watcher.pc.addTransceiver("video", direction="recvonly")
        status, _answer = await watcher.post(http, f"{urls['ls-1']}/whep/{token}")
        assert status == 201 and watcher.location.startswith(f"/whep/{token}/")
        await watcher.wait_frames(15)
        _, image = watcher.frames[-1]
        nearest = min(np.abs(image[:MARK_Y].astype(int) - f[:MARK_Y].astype(int)).mean() for f in clip)
        assert nearest > 15, nearest  # stylized frames, not the camera's
        async with http.delete(f"{urls['ls-2']}{watcher.location}") as resp:
            assert resp.status == 200
        await source.wait_message(lambda m: m["type"] == "viewers" and m["count"] == 0)
        await watcher.close()

        # A WHIP publisher on ls-2, steered and ended through ls-1.
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{urls['ls-2']}/whip"))[0] == 201
        resource = publisher.location
        assert resource.startswith("/whip/ls-2.")
        async with http.post(f"{urls['ls-1']}{resource}/prompt", json={"prompt": "pencil sketch"}) as resp:
            assert resp.status == 202 and (await resp.json())["seq"] == 1
        async with http.delete(f"{urls['ls-1']}{resource}") as resp:
            assert resp.status == 200
        await publisher.close()
        assert (await ready(http, urls["ls-2"]))[1]["sessions"] == 0

        # A pod that is gone: its links end with a clear 404, not a hang or a 500.
        procs["ls-2"].proc.terminate()
        procs["ls-2"].proc.wait(15)
        async with http.delete(f"{urls['ls-1']}{resource}") as resp:
            body = await resp.json()
            assert resp.status == 404 and "ended" in body["error"]["message"] and "ls-2" in body["error"]["message"]

        # Drain ls-0: not ready at once, offers refused, the live session told to move.
        async with http.post(f"{urls['ls-0']}/admin/drain") as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(f"{urls['ls-0']}/admin/drain", headers=auth) as resp:
            assert resp.status == 202 and (await resp.json())["draining"] is True
        status, body = await ready(http, urls["ls-0"])
        assert (status, body["reason"]) == (503, "draining")
        moved = await source.wait_message(lambda m: m["type"] == "error", timeout=20)
        assert moved["code"] == "server_draining"
        for _ in range(100):
            if (await ready(http, urls["ls-0"]))[1]["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await ready(http, urls["ls-0"]))[1]["sessions"] == 0
        async with http.post(f"{urls['ls-0']}/offer", json={"sdp": "v=0", "type": "offer"}) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["error"]["code"] == "server_draining"
            assert resp.headers["Retry-After"] == "2"
        await source.close()
