"""Viewers of a shared stream: receive-only peer connections fed by the broadcaster's
fan-out (no engine work), opened from a watch link's WHEP endpoint."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from signaling.tracks import StylizedVideoTrack

log = logging.getLogger(__name__)


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
    def new(cls, session_id: str, ttl_s: float) -> WatchLink:
        # 128 bits: the link is the capability, so it must not be guessable.
        return cls(secrets.token_urlsafe(16), session_id, time.monotonic() + ttl_s)

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

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"viewer-{self.id}:close")

    async def aclose(self) -> None:
        self.close_soon()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.track.stop()
        try:
            await self.pc.close()
        finally:
            await self.on_closed(self)
