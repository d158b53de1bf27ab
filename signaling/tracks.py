"""Media tracks: the stylized outgoing track and the remote-track drain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from pipeline.client import EngineSession, EngineUnavailable, SessionClosed
from pipeline.stats import Counter, Histogram

log = logging.getLogger(__name__)


class StylizedVideoTrack(MediaStreamTrack):
    """aiortc pulls frames with recv(); each is the engine's newest stylized frame,
    carrying its source frame's pts/time_base (strictly increasing)."""

    kind = "video"

    def __init__(self, engine_session: EngineSession, encode_ms: Histogram, sent: Counter) -> None:
        super().__init__()
        self._engine = engine_session
        self._encode_ms = encode_ms
        self._sent = sent
        self._last_pts: int | None = None
        self._handed_at: float | None = None
        self.frames_sent = 0

    async def recv(self) -> VideoFrame:  # type: ignore[override]
        if self._handed_at is not None:
            # aiortc encodes the frame we returned and only then asks for the next one,
            # so the gap between the two calls is the encode (+ packetise) time.
            self._encode_ms.observe((time.monotonic() - self._handed_at) * 1000)
            self._handed_at = None
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            try:
                out = await self._engine.recv()
            except (SessionClosed, EngineUnavailable):
                self.stop()
                raise MediaStreamError from None
            if self._last_pts is not None and out.pts <= self._last_pts:
                continue  # never send time backwards (e.g. a sender that reset its clock)
            self._last_pts = out.pts
            frame = VideoFrame.from_ndarray(out.image, format="rgb24")
            frame.pts = out.pts
            frame.time_base = out.time_base
            self.frames_sent += 1
            self._sent.inc()
            self._handed_at = time.monotonic()
            return frame


async def drain_video(
    track: MediaStreamTrack,
    submit: Callable[[np.ndarray, int, Fraction], None],
    max_short_side: int,
    on_frame: Callable[[], None],
) -> None:
    """Pull every frame off the remote track as fast as it comes (aiortc's receive
    queue is unbounded, so not reading would grow it) and hand the newest to the
    engine. Big camera frames are scaled down in swscale first (cheap, and the engine
    only needs max_short_side pixels on the short side)."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        on_frame()
        if not isinstance(frame, VideoFrame) or frame.pts is None or frame.time_base is None:
            continue
        pts, tb = frame.pts, frame.time_base
        w, h = frame.width, frame.height
        if min(w, h) > max_short_side:
            scale = max_short_side / min(w, h)
            frame = frame.reformat(width=round(w * scale) // 2 * 2, height=round(h * scale) // 2 * 2)
        # PyAV >= 19 uses its own rational type: hand the engine a plain Fraction.
        submit(frame.to_ndarray(format="rgb24"), pts, Fraction(tb.numerator, tb.denominator))


async def drain_and_discard(track: MediaStreamTrack) -> None:
    """Tracks we do not use (audio) must still be read, or their queue grows."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
