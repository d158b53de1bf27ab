"""One public address for several media processes (--place-on): the engine's server takes
each new session's offer and hands it to the media process with the most free slots; its
later requests (the page's close beacon) reach that process by the id's prefix; a full set
answers 503 with Retry-After; a media process that is gone is skipped. Real `livestyle
serve` processes and aiortc clients over loopback."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from aiohttp import ClientSession
from lean_client import LeanClient
from media import ClipTrack, davis_clip, ping_pong

from bench.serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(180)]

SECRET = "peer-secret-0123456789"
MEDIA = ("m1", "m2")


def serve(tmp_path, name: str, *args: str) -> ServeProcess:
    argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    argv += [*args, "--peer-secret", SECRET, "--log-level", "info"]
    return ServeProcess(argv, dict(os.environ), tmp_path / f"{name}.log")


@pytest.fixture
def layout(tmp_path):
    """An engine server in front (pod name `front`) and two media processes of one session each."""
    sock = str(tmp_path / "engine.sock")
    media = {
        name: serve(tmp_path, name, "--engine-socket", sock, "--pod-name", name, "--max-sessions", "1")
        for name in MEDIA
    }
    front_args = ["--engine", "preview", "--engine-host", sock, "--pod-name", "front", "--place-on", ",".join(MEDIA)]
    for name, proc in media.items():
        front_args += ["--peer", f"{name}={proc.url}"]
    front = serve(tmp_path, "front", *front_args)
    front.start()
    for proc in media.values():
        proc.start()
    try:
        for proc in (front, *media.values()):
            record = proc.wait_ready(60)
            assert "error" not in record, record
        yield front, media
    finally:
        for proc in (*media.values(), front):
            proc.stop()


async def offer_status(http: ClientSession, url: str) -> tuple[int, dict, dict]:
    async with http.post(f"{url}/offer", json={"sdp": "v=0\r\n", "type": "offer"}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_new_sessions_are_spread_over_the_media_processes_behind_one_address(layout):
    front, media = layout
    clip = ping_pong(davis_clip("blackswan"))
    clients: list[LeanClient] = []
    async with ClientSession() as http:
        try:
            for _ in MEDIA:
                client = LeanClient(front.url, ClipTrack(clip, fps=30), prompt="ink")
                await client.connect(http)
                clients.append(client)
            owners = sorted(c.answer["session_id"].partition(".")[0] for c in clients)
            assert owners == sorted(MEDIA), "one session on each media process (most free slots first)"
            for client in clients:
                await client.wait_frames(10, timeout=30)  # stylized frames back from the shared engine

            status, body, headers = await offer_status(http, front.url)
            assert status == 503 and body["error"]["code"] == "no_capacity" and headers.get("Retry-After") == "30", body
            async with http.get(f"{front.url}/readyz") as resp:  # what a Service's readiness probe sees
                ready = await resp.json()
                assert resp.status == 503 and ready["reason"] == "full" and ready["free_slots"] == 0, ready

            # The page's close beacon goes to the public address and reaches the owner.
            first = clients[0]
            async with http.post(front.url + first.answer["close_url"], data=first.answer["close_secret"]) as resp:
                assert resp.status == 204
            freed = first.answer["session_id"].partition(".")[0]
            deadline = time.monotonic() + 10
            while True:
                async with http.get(f"{media[freed].url}/readyz") as resp:
                    if (await resp.json())["free_slots"] == 1:
                        break
                assert time.monotonic() < deadline, "the close beacon did not reach the owning media process"
            await first.close()
            clients.remove(first)
            again = LeanClient(front.url, ClipTrack(clip, fps=30), prompt="ink")
            await again.connect(http)
            clients.append(again)
            assert again.answer["session_id"].startswith(f"{freed}."), "the freed slot took the next session"
        finally:
            for client in clients:
                await client.close()
    assert "media process m1 connected" in front.log_tail() and "media process m2 connected" in front.log_tail()


async def test_a_media_process_that_is_gone_is_skipped(layout):
    front, media = layout
    async with ClientSession() as http, http.get(f"{front.url}/readyz") as resp:
        ready = await resp.json()
        assert resp.status == 200 and ready["free_slots"] == 2, ready  # the media processes' slots
    os.kill(media["m1"].proc.pid, signal.SIGKILL)
    media["m1"].proc.wait(10)
    clip = ping_pong(davis_clip("blackswan"))
    async with ClientSession() as http:
        client = LeanClient(front.url, ClipTrack(clip, fps=30), prompt="ink")
        try:
            await client.connect(http)
            assert client.answer["session_id"].startswith("m2.")
            await client.wait_frames(5, timeout=30)
            status, body, _ = await offer_status(http, front.url)
            assert status == 503 and "full or not ready (2 asked)" in body["error"]["message"], body
        finally:
            await client.close()
