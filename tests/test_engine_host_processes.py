"""One engine, two `livestyle serve` processes: one runs the (preview) engine and lends it on
a Unix socket (--engine-host), the other runs no engine and only the WebRTC sessions
(--engine-socket). A real aiortc client streams through the media process; the engine
process is SIGKILLed mid-stream and started again, and the session resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest
from aiohttp import ClientSession
from lean_client import LeanClient
from media import ClipTrack, davis_clip, ping_pong

from bench.serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(150)]


def engine_process(tmp_path, sock: str) -> ServeProcess:
    argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    argv += ["--engine", "preview", "--engine-host", sock, "--log-level", "info"]
    return ServeProcess(argv, dict(os.environ), tmp_path / f"engine-{time.monotonic_ns()}.log")


async def wait_status(http: ClientSession, url: str, status: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/healthz") as resp:
                body = await resp.json()
                if body["status"] == status:
                    return body
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz never said {status}: {body}")


async def test_sessions_of_a_media_process_survive_the_engine_process_restarting(tmp_path):
    sock = str(tmp_path / "engine.sock")
    engine = engine_process(tmp_path, sock)
    media_argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    media_argv += ["--engine-socket", sock, "--max-sessions", "2", "--log-level", "info"]
    media = ServeProcess(media_argv, dict(os.environ), tmp_path / "media.log")
    media.start()  # first: it waits for the engine process
    engine.start()
    client = None
    try:
        async with ClientSession() as http:
            body = await wait_status(http, media.url, "ok")
            assert body["engine"]["kind"] == "preview" and body["capacity"] == 2, body
            client = LeanClient(media.url, ClipTrack(ping_pong(davis_clip("blackswan")), fps=30), prompt="ink")
            await client.connect(http)
            await client.wait_frames(10, timeout=30)
            os.kill(engine.proc.pid, signal.SIGKILL)  # no goodbye: the socket just ends
            body = await wait_status(http, media.url, "restarting")
            assert "lost the engine process" in body["reason"] and body["sessions"] == 1, body
            engine = engine_process(tmp_path, sock)
            engine.start()  # finds the dead one's socket file and replaces it
            await wait_status(http, media.url, "degraded")  # running again after a restart
            before = len(client.seen)
            await client.wait_frames(before + 20, timeout=30)
            pts = [s.pts for s in client.seen]
            assert pts == sorted(pts), "output pts went backwards across the restart"
    finally:
        if client is not None:
            await client.close()
        for proc in (media, engine):
            proc.stop()
    assert "media process m1 connected" in engine.log_tail()
