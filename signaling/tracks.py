"""Media tracks: the stylized outgoing tracks (fanned out to the broadcaster and its
viewers) and the remote-track drain. The per-frame pixel work of both (scaling, colour
conversion, building frames) runs on one worker thread each, never on the event loop;
aiortc itself decodes on a thread per receiver and encodes on its executor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction

import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from pipeline.client import EngineSession, EngineUnavailable, SessionClosed
from pipeline.messages import FrameOut
from pipeline.slots import LatestSlot, SlotClosed
from pipeline.stats import Counter, Histogram
from signaling.offload import LatestWorker

log = logging.getLogger(__name__)


class StylizedVideoTrack(MediaStreamTrack):
    """One consumer of a session's stylized video (the broadcaster's own peer connection or
    a viewer's). aiortc pulls frames with recv(); each is the newest frame the fan-out
    offered (latest-frame slot: a slow consumer drops frames, it never queues them)."""

    kind = "video"

    def __init__(self, encode_ms: Histogram, sent: Counter) -> None:
        super().__init__()
        self._slot: LatestSlot[VideoFrame] = LatestSlot()
        self._encode_ms = encode_ms
        self._sent = sent
        self._handed_at: float | None = None
        self.frames_sent = 0

    def offer(self, frame: VideoFrame) -> None:
        self._slot.put(frame)

    def stop(self) -> None:
        self._slot.close()
        super().stop()

    async def recv(self) -> VideoFrame:  # type: ignore[override]
        if self._handed_at is not None:
            # aiortc encodes the frame we returned and only then asks for the next one,
            # so the gap between the two calls is the encode (+ packetise) time.
            self._encode_ms.observe((time.monotonic() - self._handed_at) * 1000)
            self._handed_at = None
        if self.readyState != "live":
            raise MediaStreamError
        try:
            frame = await self._slot.get()
        except SlotClosed:
            raise MediaStreamError from None
        self.frames_sent += 1
        self._sent.inc()
        self._handed_at = time.monotonic()
        return frame


FanOutJob = tuple[FrameOut, tuple[StylizedVideoTrack, ...]]
TrackFrames = list[tuple[StylizedVideoTrack, VideoFrame]]


class StylizedFanOut:
    """Offers each engine output (source pts/time_base, strictly increasing) to every
    subscribed track: viewers of a shared stream cost an encoder each, never another engine
    step. Every track gets its own VideoFrame: encoders run on executor threads and PyAV
    frames are not safe to reformat from two threads at once (a shared one deadlocked)."""

    def __init__(self, engine_session: EngineSession, encode_ms: Histogram, sent: Counter) -> None:
        self._engine = engine_session
        self._encode_ms = encode_ms
        self._sent = sent
        self._tracks: set[StylizedVideoTrack] = set()
        self._last_pts: int | None = None

    def subscribe(self) -> StylizedVideoTrack:
        track = StylizedVideoTrack(self._encode_ms, self._sent)
        self._tracks.add(track)
        return track

    def unsubscribe(self, track: StylizedVideoTrack) -> None:
        self._tracks.discard(track)
        track.stop()

    async def run(self) -> None:
        """Until the engine session closes (owned and cancelled by the Session)."""
        worker: LatestWorker[FanOutJob, TrackFrames] = LatestWorker("livestyle-fanout", _frames_for, self._offer)
        try:
            while True:
                try:
                    out = await self._engine.recv()
                except (SessionClosed, EngineUnavailable):
                    return
                if self._last_pts is not None and out.pts <= self._last_pts:
                    continue  # never send time backwards (e.g. a sender that reset its clock)
                self._last_pts = out.pts
                if self._tracks:
                    worker.put((out, tuple(self._tracks)))
        finally:
            await worker.aclose()
            for track in list(self._tracks):
                track.stop()

    def _offer(self, frames: TrackFrames) -> None:
        for track, frame in frames:
            if track in self._tracks:  # not one that left while its frame was being made
                track.offer(frame)


def _frames_for(job: FanOutJob) -> TrackFrames:
    """Worker thread: the engine's RGB output as one I420 frame per track (converted once;
    the encoders take I420 as is instead of each converting the RGB frame again)."""
    out, tracks = job
    i420 = to_i420(out.image)
    frames = []
    for track in tracks:
        frame = VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = out.pts
        frame.time_base = out.time_base
        frames.append((track, frame))
    return frames


def to_i420(image: np.ndarray) -> np.ndarray:
    """RGB (even sides: the engine's output side is a multiple of 64) to I420 planes.
    OpenCV uses swscale's BT.601 limited-range matrix at a fraction of its cost."""
    i420: np.ndarray = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)
    return i420


EngineInput = tuple[np.ndarray, int, Fraction]


async def drain_video(
    track: MediaStreamTrack,
    submit: Callable[[np.ndarray, int, Fraction], None],
    max_short_side: int,
    on_frame: Callable[[], None],
) -> None:
    """Pull every frame off the remote track as fast as it comes (aiortc's receive
    queue is unbounded, so not reading would grow it) and hand the newest to the
    engine, scaled and converted to RGB on a worker thread."""
    worker: LatestWorker[VideoFrame, EngineInput] = LatestWorker(
        "livestyle-reader", lambda frame: to_engine_input(frame, max_short_side), lambda args: submit(*args)
    )
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            on_frame()
            if isinstance(frame, VideoFrame) and frame.pts is not None and frame.time_base is not None:
                worker.put(frame)
    finally:
        await worker.aclose()


def to_engine_input(frame: VideoFrame, max_short_side: int) -> EngineInput:
    """A decoded frame as (RGB array, pts, time_base). Big camera frames are scaled so
    their short side is max_short_side (the engine needs no more), in the same swscale
    pass as the colour conversion; area averaging is the right filter for shrinking."""
    w, h = frame.width, frame.height
    if min(w, h) > max_short_side:
        scale = max_short_side / min(w, h)
        w, h = round(w * scale) // 2 * 2, round(h * scale) // 2 * 2
    rgb: np.ndarray = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    pts, tb = frame.pts, frame.time_base
    assert pts is not None and tb is not None  # drain_video passes only timed frames
    # PyAV >= 19 uses its own rational type: hand the engine a plain Fraction.
    return rgb, pts, Fraction(tb.numerator, tb.denominator)


async def drain_and_discard(track: MediaStreamTrack) -> None:
    """Tracks we do not use (audio) must still be read, or their queue grows."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
