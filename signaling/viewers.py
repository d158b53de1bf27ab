"""Viewers of a shared stream: receive-only peer connections fed by the broadcaster's
fan-out (no engine work), opened from a watch link's WHEP endpoint."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signaling.tracks import StylizedFanOut, StylizedVideoTrack

log = logging.getLogger(__name__)


class BadSdp(ValueError):
    """An SDP offer that cannot be used; the message says why, for the client."""


class WatchNotFound(LookupError):
    """Unknown, revoked or expired watch link, or a broadcaster that has left."""


class ViewersFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"this stream has its maximum of {limit} viewers; try again later")
        self.limit = limit


@dataclass
class WatchLink:
    token: str
    session_id: str
    expires_at: float
    """time.monotonic() after which the link is dead."""

    @classmethod
    def new(cls, session_id: str, ttl_s: float, prefix: str = "") -> WatchLink:
        # 128 bits: the link is the capability, so it must not be guessable. The prefix (the
        # owner pod's name in a fleet) only routes; it adds no secrecy.
        return cls(prefix + secrets.token_urlsafe(16), session_id, time.monotonic() + ttl_s)

    @property
    def path(self) -> str:
        return f"/watch/{self.token}"

    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at


@dataclass(eq=False)
class Viewer:
    id: str
    pc: RTCPeerConnection
    track: StylizedVideoTrack
    on_closed: Callable[[Viewer], Awaitable[None]]
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)
    _deadline: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self, connect_timeout_s: float) -> None:
        """After the answer: a viewer whose ICE never completes gives its seat back."""
        self.pc.on("connectionstatechange", self._on_state)
        self._deadline = asyncio.create_task(self._expire(connect_timeout_s), name=f"viewer-{self.id}:deadline")

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close_soon()

    async def _expire(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        if self.pc.connectionState != "connected":
            log.info("viewer %s not connected %g s after its answer: closing", self.id, timeout_s)
            self.close_soon()

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"viewer-{self.id}:close")

    async def aclose(self) -> None:
        self.close_soon()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()  # a no-op when the deadline itself closed us
        self.track.stop()
        try:
            await self.pc.close()
        finally:
            await self.on_closed(self)


class Audience:
    """A broadcaster's viewers, each a receive-only peer fed by its fan-out. Every viewer
    owns its tasks; the audience only keeps the seats."""

    def __init__(
        self,
        fanout: StylizedFanOut,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        on_count: Callable[[int], None],
        connect_timeout_s: float,
    ) -> None:
        self._fanout = fanout
        self._log = log
        self._on_count = on_count
        self._connect_timeout_s = connect_timeout_s
        self._viewers: dict[str, Viewer] = {}

    def __len__(self) -> int:
        return len(self._viewers)

    def get(self, viewer_id: str) -> Viewer | None:
        return self._viewers.get(viewer_id)

    def values(self) -> list[Viewer]:
        """The viewers now (a copy: closing one while iterating is fine)."""
        return list(self._viewers.values())

    async def add(self, offer_sdp: str, rtc_config: RTCConfiguration, max_viewers: int) -> tuple[Viewer, str]:
        """A receive-only peer for a viewer; returns it and the answer SDP."""
        if len(self._viewers) >= max_viewers:
            raise ViewersFull(max_viewers)
        pc = RTCPeerConnection(rtc_config)
        viewer = Viewer(secrets.token_urlsafe(9), pc, self._fanout.subscribe(), self._closed)
        self._viewers[viewer.id] = viewer
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise BadSdp("the offer has no video to receive")
            pc.addTrack(viewer.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadSdp:
            await viewer.aclose()
            raise
        except Exception as exc:
            await viewer.aclose()
            raise BadSdp(f"the offer could not be parsed: {exc}") from exc
        viewer.start(self._connect_timeout_s)
        self._log.info("viewer %s joined (%d watching)", viewer.id, len(self._viewers))
        self._on_count(len(self._viewers))
        return viewer, pc.localDescription.sdp

    async def _closed(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.id, None) is not None:
            self._fanout.unsubscribe(viewer.track)
            self._log.info("viewer %s left (%d watching)", viewer.id, len(self._viewers))
            self._on_count(len(self._viewers))

    def disconnect(self) -> None:
        """Close every viewer (a revoked link) from code that cannot await."""
        for viewer in self.values():
            viewer.close_soon()

    async def aclose(self) -> None:
        await asyncio.gather(*(v.aclose() for v in self.values()), return_exceptions=True)
