"""Helpers for the hostile-client HTTP tests: the real app behind the same connection
settings `livestyle serve` uses, raw-socket requests (bytes a polite client library would
never send) and a watch on everything the server logs or leaks as an unhandled error."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from multidict import CIMultiDict

from pipeline.config import EngineConfig
from server.app import create_app, server_options
from server.config import ServerConfig
from server.keys import ENGINE

OFFERS = json.loads((Path(__file__).parent / "data" / "chromium-offers.json").read_text())


@dataclass
class RawResponse:
    status: int | None
    """None when the server closed without answering."""
    headers: dict[str, str]
    body: bytes
    seconds: float
    """From sending the request to the connection closing (or the read giving up)."""
    closed: bool
    """The server closed the connection (False: still open when the read gave up)."""

    def json(self) -> dict:
        return json.loads(self.body)


def parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not lines[0].startswith("HTTP/") or len(parts) < 2 or not parts[1].isdigit():
        return None, {}, data
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, body


async def raw_exchange(
    port: int, chunks: list[bytes], *, pause: float = 0.0, read_timeout: float = 15.0, close_early: bool = False
) -> RawResponse:
    """Send `chunks` (pausing between them) while reading whatever the server answers, until
    it closes. close_early: hang up right after the last chunk (a client that vanishes)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> bool:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionError:
            pass
        return True

    reading = asyncio.create_task(read())
    closed = False
    try:
        for i, chunk in enumerate(chunks):
            if reading.done():
                break  # the server answered and closed while we were still sending
            if i and pause:
                await asyncio.sleep(pause)
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break
        if close_early:
            reading.cancel()
            return RawResponse(None, {}, b"", time.monotonic() - started, False)
        try:
            closed = await asyncio.wait_for(asyncio.shield(reading), read_timeout)
        except TimeoutError:
            pass
    finally:
        reading.cancel()
        writer.close()
    status, headers, body = parse_response(bytes(received))
    return RawResponse(status, headers, body, time.monotonic() - started, closed)


def request_bytes(method: str, path: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """One HTTP/1.1 request that asks the server to close after answering."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class ServerWatch:
    """Errors the server leaked: ERROR log records and exceptions nobody retrieved."""

    records: list[logging.LogRecord] = field(default_factory=list)
    loop_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        logged = [f"{r.name}: {r.getMessage()}" for r in self.records if r.levelno >= logging.ERROR or r.exc_info]
        return logged + self.loop_errors


class _Collect(logging.Handler):
    def __init__(self, watch: ServerWatch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        self.watch.records.append(record)


async def start_edge_server(**config: object) -> tuple[TestServer, ServerWatch]:
    """The preview-engine app with `livestyle serve`'s connection settings; the watch
    collects what it logs (root logger) and every unretrieved task exception on the loop."""
    cfg = ServerConfig(port=0, engine=EngineConfig(kind="preview"), **config)  # type: ignore[arg-type]
    watch = ServerWatch()
    handler = _Collect(watch)
    logging.getLogger().addHandler(handler)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: watch.loop_errors.append(str(context.get("exception"))))
    server = TestServer(create_app(cfg), host="127.0.0.1")
    await server.start_server(**server_options(cfg))
    await server.app[ENGINE].wait_ready(10)
    original_close = server.close

    async def close() -> None:
        try:
            await original_close()
        finally:
            logging.getLogger().removeHandler(handler)
            loop.set_exception_handler(None)

    server.close = close  # type: ignore[method-assign]
    return server, watch


def without_candidates(sdp: str) -> str:
    """An SDP with its ICE candidates removed (what a trickling client POSTs, or an answer
    whose candidates a test hides from its own side)."""
    lines = sdp.split("\r\n")
    return "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))


@dataclass
class SdpPeer:
    """A plain-SDP-over-HTTP peer (what OBS or a WHEP player is to the server)."""

    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    location: str | None = None
    headers: CIMultiDict = field(default_factory=CIMultiDict)
    offer: str = ""
    """The SDP this peer POSTed."""
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.frames.append((time.monotonic(), frame.to_ndarray(format="rgb24")))

        self._tasks.append(asyncio.create_task(read()))

    async def post(
        self,
        http: ClientSession,
        url: str,
        auth: str | None = None,
        *,
        offer_filter: Callable[[str], str] = str,
        answer_filter: Callable[[str], str] = str,
    ) -> tuple[int, object]:
        """POST the offer (through offer_filter), apply the answer (through answer_filter)."""
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer = offer_filter(self.pc.localDescription.sdp)
        headers = {"Content-Type": "application/sdp"}
        if auth:
            headers["Authorization"] = f"Bearer {auth}"
        async with http.post(url, data=self.offer, headers=headers) as resp:
            self.headers = resp.headers.copy()  # case-insensitive
            if resp.status != 201:
                return resp.status, await resp.json()
            assert resp.content_type == "application/sdp"
            answer = await resp.text()
            self.location = resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_filter(answer), "answer"))
        return 201, answer

    def candidates(self) -> list[str]:
        """This peer's own candidates as SDP attribute values (after 'a=candidate:')."""
        lines = self.pc.localDescription.sdp.split("\r\n")
        return [line[len("a=candidate:") :] for line in lines if line.startswith("a=candidate:")]

    async def wait_frames(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"got {len(self.frames)} of {count} frames"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
