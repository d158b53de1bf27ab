"""A media process's link to an engine in another process (`pipeline.host`), behind the
same EngineClient every caller already uses: `EngineClient(remote_spec(path, size),
link=RemoteLink.factory(path))`.

The link stands where the restart supervisor stands in-process: it gives the client a
bridge (here, the socket), tells it when the engine is ready, delivers its results, and
when the connection is lost reports `restarting`, reconnects, and lets the client
re-attach every live session with its prompt, adapter strength and seed, exactly as after
an engine rebuild. The engine process's own health (warming up, restarting, gave up) is
mirrored into this process's /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline import wire
from pipeline.core import EngineCore, StepResult
from pipeline.health import EngineHealth
from pipeline.messages import Command, EngineInfo, FrameIn
from pipeline.stats import EngineStats

if TYPE_CHECKING:
    from pipeline.client import EngineSpec
    from pipeline.supervisor import SupervisedClient

log = logging.getLogger(__name__)

RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between connection attempts (the last one repeats)."""
STEADY_S = 5.0
"""A connection that lasted this long starts the waits over; a shorter one (an engine process
that refuses or drops this one at once) keeps backing off."""
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
"""Unsent bytes to the engine process past which input frames are dropped, not queued."""


def remote_spec(path: str, output_size: int, max_prompt_chars: int) -> EngineSpec:
    """What this process knows before the engine process answers (replaced by its hello)."""
    from pipeline.client import EngineSpec

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        raise RuntimeError("a remote engine is built by its own process")

    info = EngineInfo(
        "preview", "(engine process)", f"the engine runs in another process ({path})", output_size, 1, max_prompt_chars
    )
    return EngineSpec(info, build)


class RemoteBridge:
    """Commands and frames to the engine process, as `EngineBridge` takes them in-process."""

    def __init__(self, stream: wire.MessageStream) -> None:
        self._stream = stream

    def put_frame(self, frame: FrameIn) -> bool:
        """Send the frame; True (dropped) when the engine process is not keeping up."""
        if self._stream.is_closing() or self._stream.buffered() > MAX_BUFFERED_BYTES:
            return True
        self._stream.writelines(wire.encode_frame_in(frame))
        return False

    def send(self, cmd: Command, *, discard_frames_of: str | None = None) -> None:
        self._stream.writelines(wire.encode_command(cmd))


class RemoteLink:
    """Owns the connection task; `aclose()` ends it."""

    def __init__(self, path: str, stats: EngineStats, health: EngineHealth, client: SupervisedClient) -> None:
        self.path = path
        self.bridge: RemoteBridge | None = None
        self._stats = stats
        self._health = health
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._stream: wire.MessageStream | None = None
        self.losses = 0
        self.bridge_served = False
        """Connections to the engine process lost (each one a restart in this process's health)."""

    @classmethod
    def factory(cls, path: str) -> Callable[[EngineStats, EngineHealth, SupervisedClient], RemoteLink]:
        return lambda stats, health, client: cls(path, stats, health, client)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-link")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._drop_connection()

    async def _run(self) -> None:
        attempt = 0
        while not self._health.final:
            try:
                loop = asyncio.get_running_loop()
                _, stream = await loop.create_unix_connection(wire.MessageStream, self.path)
            except OSError as exc:
                if attempt == 0 or attempt % 30 == 0:
                    log.info("engine process at %s not reachable yet: %s", self.path, exc)
                self._health.report_progress(f"waiting for the engine process at {self.path}")
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            started = time.monotonic()
            reason = await self._serve(stream)
            self._drop_connection()
            if self._health.final:
                return
            if self.bridge_served:
                self.losses += 1
                message = f"lost the engine process ({reason}); reconnecting"
                log.error("%s", message)
                if self._health.status != "restarting":
                    self._health.restarting(message)
                    self._client.restarting(message)
            attempt = 0 if time.monotonic() - started >= STEADY_S else attempt + 1
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])

    async def _serve(self, stream: wire.MessageStream) -> str:
        """One connection, until it ends; returns why it ended. bridge_served: whether it got
        as far as carrying this process's sessions."""
        self._stream = stream
        self.bridge_served = False
        try:
            header, _ = await stream.read()
            if header["t"] != "hello":
                raise wire.WireError(f"expected hello, got {header['t']!r}")
            if header.get("version") != wire.WIRE_VERSION:  # another release: retrying cannot help
                self._give_up(
                    f"the engine process at {self.path} speaks engine wire version {header.get('version')!r} "
                    f"and this one {wire.WIRE_VERSION}: run the same livestyle release in both"
                )
                return "wire version mismatch"
            info = wire.decode_info(header)
            self._client.info = info  # what /healthz and the page show
            log.info("connected to the engine process at %s: %s engine (%s)", self.path, info.kind, info.model)
            self.bridge = RemoteBridge(stream)
            self.bridge_served = True
            self._client.attach(self.bridge)
            self._mirror(wire.field(header, "health", dict))
            while True:
                header, payload = await stream.read()
                self._handle(header, payload)
        except asyncio.IncompleteReadError:
            return "it closed the connection"
        except ConnectionError as exc:
            return f"connection error: {exc}"
        except wire.WireError as exc:
            log.error("the engine process broke the protocol: %s", exc)
            return f"protocol error: {exc}"

    def _drop_connection(self) -> None:
        self.bridge = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _handle(self, header: dict[str, Any], payload: bytes | bytearray) -> None:
        kind = header["t"]
        if kind == "out":
            frame = wire.decode_frame_out(header, payload)
            # This process's /metrics count its own sessions' frames; step and batch
            # histograms live in the engine process's.
            self._stats.frames_out.inc()
            self._stats.frame_latency_ms.observe((frame.t_out - frame.t_in) * 1000)
            self._client.deliver(StepResult(outputs=[frame]))
        elif kind in ("applied", "error"):
            self._client.deliver(StepResult(events=[wire.decode_event(header)]))
        elif kind == "failed":  # the engine process gave up: once for the whole client
            self._give_up(str(wire.field(header, "message", str)))
        elif kind == "health":
            self._mirror(wire.field(header, "health", dict))
        else:
            raise wire.WireError(f"unknown message type {kind!r}")

    def _give_up(self, reason: str) -> None:
        if not self._health.final:
            self._health.unhealthy(reason)
            self._client.gave_up(reason)

    def _mirror(self, snapshot: dict[str, Any]) -> None:
        """The engine process's health, as this process's own state machine's transitions."""
        status, reason = snapshot.get("status"), str(snapshot.get("reason") or "")
        health, client = self._health, self._client
        if status in ("ok", "degraded"):
            if not health.running:
                health.ready()
                client.ready()
            if status == "degraded" and health.status == "ok":
                health.transient(reason)
        elif status == "warming_up":
            health.report_progress(str(snapshot.get("progress") or reason or "the engine process is starting"))
        elif status == "restarting":  # each session hears it from its own engine session
            if health.status != "restarting":
                health.restarting(reason)
        elif status == "unhealthy":
            self._give_up(reason)
        # Counts as the engine process has them (it may rebuild between two polls, unseen
        # as `restarting` here), plus this process's own lost connections.
        with contextlib.suppress(TypeError, ValueError):
            health.transient_faults = int(snapshot.get("transient_faults", 0))  # type: ignore[arg-type]
            health.restarts = int(snapshot.get("restarts", 0)) + self.losses  # type: ignore[arg-type]
