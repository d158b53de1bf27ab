"""The engine process's side of `pipeline.wire`: serves one EngineClient to media processes
over a Unix socket, so several processes (each with its own GIL and event loop for the
WebRTC work) share one GPU engine and its batches.

Each connection is one media process. Its session ids are its own: they are prefixed with
the connection's number before they reach the engine, so a process can neither see nor
close another's sessions. Output frames are dropped (counted) rather than queued when the
process reads slower than the engine makes them; a protocol error or a lost connection
closes that process's sessions and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any

from pipeline import wire
from pipeline.client import EngineClient, EngineSession, EngineUnavailable, SessionClosed
from pipeline.messages import EngineFailed, FrameOut, SessionError
from pipeline.slots import SlotClosed

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.25


class EngineHostError(RuntimeError):
    """The engine host cannot listen where it was told to."""


@dataclass(frozen=True)
class HostLimits:
    max_sessions: int = 64
    """Sessions one media process may hold open at once."""
    max_buffered_bytes: int = 8 * 1024 * 1024
    """Unsent bytes to a media process past which output frames are dropped, not queued."""
    max_connections: int = 16
    """Media processes connected at once; a further one is refused (its connection closed)."""


@dataclass
class _Stream:
    session: EngineSession
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class EngineHost:
    """Owns the Unix socket server and every connection's tasks; `aclose()` ends them."""

    def __init__(self, engine: EngineClient, path: str, limits: HostLimits | None = None) -> None:
        self.engine = engine
        self.path = path
        self.limits = limits or HostLimits()
        self.frames_dropped = 0
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._count = 0

    async def start(self) -> None:
        """Raises EngineHostError (saying the path and the flag) when it cannot listen."""
        self._clear_stale_socket()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(lambda: wire.MessageStream(self._connected), self.path)
        except OSError as exc:
            raise EngineHostError(
                f"--engine-host {self.path}: cannot listen there ({exc.strerror or exc}); give a path in an "
                "existing directory this user can write, e.g. /tmp/livestyle-engine.sock"
            ) from None
        os.chmod(self.path, 0o600)  # only this user's processes may feed the engine
        log.info("engine host listening on %s", self.path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            await conn.aclose()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _clear_stale_socket(self) -> None:
        """Remove a socket file that a killed engine host left; never anything else."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise EngineHostError(
                f"--engine-host {self.path} exists and is not a socket: not replacing it; give another path"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:
                os.unlink(self.path)  # nobody listens: left by a process that was killed
                return
            except OSError:
                return  # not ours to judge (e.g. no permission): the bind will say so
        raise EngineHostError(
            f"--engine-host {self.path}: another engine host is listening there; stop it or give another path"
        )

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _connected(self, stream: wire.MessageStream) -> None:
        if len(self._connections) >= self.limits.max_connections:
            log.warning("refused a media process: %d are connected (the limit)", len(self._connections))
            stream.close()
            return
        self._count += 1
        conn = _Connection(self, f"m{self._count}", stream)
        self._connections.add(conn)
        task = asyncio.create_task(self._serve(conn), name=f"engine-host-{conn.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            await conn.aclose()


class _Connection:
    def __init__(self, host: EngineHost, name: str, stream: wire.MessageStream) -> None:
        self.host, self.name, self.stream = host, name, stream
        self.streams: dict[str, _Stream] = {}
        self._health_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        engine = self.host.engine
        self._send(wire.encode_hello(engine.info, engine.health.snapshot()))
        self._health_task = asyncio.create_task(self._watch_health(), name=f"engine-host-{self.name}-health")
        log.info("media process %s connected", self.name)
        try:
            while True:
                header, payload = await self.stream.read()
                self._handle(header, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("media process %s disconnected", self.name)
        except wire.WireError as exc:
            log.warning("media process %s broke the protocol, closing it: %s", self.name, exc)

    async def aclose(self) -> None:
        tasks = [t for s in self.streams.values() for t in s.tasks]
        for stream in self.streams.values():
            stream.session.close()
        self.streams.clear()
        if self._health_task is not None:
            tasks.append(self._health_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.stream.close()
        await self.stream.wait_closed()

    # ---- from the media process ---------------------------------------------------------

    def _handle(self, header: dict[str, Any], payload: bytes | bytearray) -> None:
        kind = header["t"]
        if kind == "frame":
            frame = wire.decode_frame_in(header, payload)
            stream = self.streams.get(frame.session_id)
            if stream is not None:  # else closed a moment ago: its last frames still arrive
                stream.session.submit(frame.image, frame.pts, frame.time_base, t_in=frame.t_in)
            return
        if payload:
            raise wire.WireError(f"{kind}: a payload of {len(payload)} bytes on a message that takes none")
        sid = wire.session_id(header)
        if kind == "open":
            self._open(sid, str(wire.field(header, "prompt", str)), int(wire.field(header, "seq", int)))
            return
        stream = self.streams.get(sid)
        if kind == "close":
            if stream is not None:
                del self.streams[sid]
                stream.session.close()
                for task in stream.tasks:
                    task.cancel()
            return
        seq = int(wire.field(header, "seq", int))
        if kind not in ("prompt", "adapter", "reseed"):
            raise wire.WireError(f"unknown message type {kind!r}")
        if stream is None:
            return
        try:
            if kind == "prompt":
                stream.session.set_prompt(str(wire.field(header, "prompt", str)), seq)
            elif kind == "adapter":
                stream.session.set_adapter_strength(float(wire.field(header, "value", (int, float))), seq)
            else:
                stream.session.reseed(int(wire.field(header, "seed", int)), seq)
        except EngineUnavailable:
            pass  # the session's events say so

    def _open(self, sid: str, prompt: str, seq: int) -> None:
        if sid in self.streams:
            raise wire.WireError(f"session {sid} is already open")
        if len(self.streams) >= self.host.limits.max_sessions:
            message = f"this media process already has {len(self.streams)} sessions (engine host limit)"
            self._send(wire.encode_event(sid, SessionError(sid, "session_failed", message)))
            return
        try:
            session = self.host.engine.open_session(f"{self.name}/{sid}", prompt, seq)
        except EngineUnavailable as exc:
            self._send(wire.encode_event(sid, EngineFailed(str(exc))))
            return
        stream = self.streams[sid] = _Stream(session)
        stream.tasks = [
            asyncio.create_task(self._pump_frames(sid, session), name=f"engine-host-{self.name}-{sid}-out"),
            asyncio.create_task(self._pump_events(sid, session), name=f"engine-host-{self.name}-{sid}-events"),
        ]

    # ---- to the media process -----------------------------------------------------------

    def _send(self, buffers: list[bytes | memoryview]) -> None:
        self.stream.writelines(buffers)

    async def _pump_frames(self, sid: str, session: EngineSession) -> None:
        limit = self.host.limits.max_buffered_bytes
        with contextlib.suppress(SessionClosed, EngineUnavailable):
            while True:
                frame: FrameOut = await session.recv()
                if self.stream.buffered() > limit:
                    self.host.frames_dropped += 1  # the media process is behind: newest wins
                    continue
                self._send(wire.encode_frame_out(sid, frame))

    async def _pump_events(self, sid: str, session: EngineSession) -> None:
        with contextlib.suppress(SlotClosed):
            while True:
                self._send(wire.encode_event(sid, await session.next_event()))

    async def _watch_health(self) -> None:
        engine, last = self.host.engine, None
        while True:
            snapshot = engine.health.snapshot()
            if snapshot != last:
                self._send(wire.encode_health(snapshot))
                last = snapshot
            await asyncio.sleep(HEALTH_POLL_S)
