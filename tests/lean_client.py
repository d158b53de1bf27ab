"""A loopback WebRTC client for long runs: like media.LoopbackClient, but instead of every
decoded 512x512 frame it keeps a small record of each (time, pts, the frame-id stamp) and
only the last few images, so minutes of video cost kilobytes."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from media import LoopbackClient, read_stamp


@dataclass(frozen=True)
class Seen:
    t: float
    pts: int
    index: int | None
    """The frame-id stamp the sender wrote (None when unreadable)."""


@dataclass
class LeanClient(LoopbackClient):
    keep_images: int = 0
    seen: list[Seen] = field(default_factory=list)
    images: deque[tuple[Seen, np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        self.images = deque(maxlen=self.keep_images)

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.VideoFrame) or frame.pts is None:
                continue
            image = frame.to_ndarray(format="rgb24")
            seen = Seen(time.monotonic(), frame.pts, read_stamp(image))
            self.seen.append(seen)
            self.images.append((seen, image))

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"received {len(self.seen)} of {count} frames")
            await asyncio.sleep(0.05)
