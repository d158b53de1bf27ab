"""Per-frame work off the event loop: the worker thread (signaling/offload.py), the
remote-track drain and the stylized fan-out (signaling/tracks.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from media import davis_clip

from pipeline.client import SessionClosed
from pipeline.messages import FrameOut
from pipeline.stats import Counter, Histogram
from signaling import tracks
from signaling.offload import LatestWorker
from signaling.tracks import StylizedFanOut, drain_video, to_engine_input

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

TB = Fraction(1, 90_000)


def worker_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("livestyle-")}


# ---- LatestWorker ---------------------------------------------------------------------------


async def test_worker_runs_off_the_loop_and_delivers_on_it():
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int, int]] = []
    done = asyncio.Event()

    def deliver(result: tuple[int, int]) -> None:
        seen.append((*result, threading.get_ident()))
        done.set()

    def work(x: int) -> tuple[int, int]:
        return x * 2, threading.get_ident()

    worker: LatestWorker[int, tuple[int, int]] = LatestWorker("livestyle-test", work, deliver)
    worker.put(21)
    await asyncio.wait_for(done.wait(), 5)
    await worker.aclose()
    ((value, work_thread, deliver_thread),) = seen
    assert value == 42 and work_thread != loop_thread and deliver_thread == loop_thread
    assert "livestyle-test" not in worker_threads()


async def test_worker_keeps_only_the_newest_item_while_busy():
    gate, started = threading.Event(), threading.Event()
    got: list[int] = []

    def work(x: int) -> int:
        started.set()
        gate.wait(5)
        return x

    worker: LatestWorker[int, int] = LatestWorker("livestyle-test", work, got.append)
    worker.put(0)
    await asyncio.to_thread(started.wait, 5)
    replaced = [worker.put(i) for i in range(1, 6)]  # never blocks, never queues
    assert replaced == [False, True, True, True, True] and worker.drops == 4
    gate.set()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await worker.aclose()
    assert got == [0, 5]


async def test_a_failing_work_surfaces_in_the_owner_and_closes_cleanly():
    def work(x: int) -> int:
        raise ValueError(f"bad frame {x}")

    worker: LatestWorker[int, int] = LatestWorker("livestyle-test", work, lambda _: None)
    worker.put(1)
    deadline = time.monotonic() + 5
    while "livestyle-test" in worker_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    with pytest.raises(ValueError, match="bad frame 1"):
        worker.put(2)
    await worker.aclose()


async def test_nothing_is_delivered_after_aclose():
    gate, started = threading.Event(), threading.Event()
    got: list[int] = []

    def work(x: int) -> int:
        started.set()
        gate.wait(5)
        return x

    worker: LatestWorker[int, int] = LatestWorker("livestyle-test", work, got.append)
    worker.put(1)
    await asyncio.to_thread(started.wait, 5)
    worker.put(2)  # pending: dropped by aclose
    closing = asyncio.create_task(worker.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the item in progress
    gate.set()
    await asyncio.wait_for(closing, 5)
    await asyncio.sleep(0.05)
    assert got == [] and "livestyle-test" not in worker_threads()
    await worker.aclose()  # twice is fine


# ---- drain_video ----------------------------------------------------------------------------


class FakeRemoteTrack(MediaStreamTrack):
    """A remote video track that yields the given frames as fast as they are read."""

    kind = "video"

    def __init__(self, frames: list[av.VideoFrame], delay: float = 0.0) -> None:
        super().__init__()
        self._frames = list(frames)
        self._delay = delay

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        if self._delay:
            await asyncio.sleep(self._delay)
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


def camera_frame(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = index * 3000, TB
    return frame


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return davis_clip("blackswan")[:8]


async def test_drain_scales_and_converts_on_a_worker_thread(clip, monkeypatch):
    converted_on: list[str] = []

    def spy(frame, max_short_side):
        converted_on.append(threading.current_thread().name)
        return to_engine_input(frame, max_short_side)

    monkeypatch.setattr(tracks, "to_engine_input", spy)
    big = [camera_frame(np.repeat(np.repeat(im, 2, 0), 2, 1), i) for i, im in enumerate(clip[:3])]  # 1024x1024
    submitted: list[tuple[np.ndarray, int, Fraction, str]] = []
    seen = []
    await drain_video(
        FakeRemoteTrack(big, delay=0.05),
        lambda image, pts, tb: submitted.append((image, pts, tb, threading.current_thread().name)),
        256,
        lambda: seen.append(1),
    )
    assert len(seen) == 3 and len(submitted) == 3
    assert set(converted_on) == {"livestyle-reader"}
    assert {name for *_, name in submitted} == {threading.current_thread().name}  # submit on the loop
    for (image, pts, tb, _), index, source in zip(submitted, range(3), clip[:3], strict=True):
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert pts == index * 3000 and tb == TB and type(tb) is Fraction
        # area-averaged back to the source's 512 -> 256 content
        small = source.reshape(256, 2, 256, 2, 3).mean((1, 3))
        assert np.abs(image.astype(float) - small).mean() < 6
    assert "livestyle-reader" not in worker_threads()


async def test_drain_keeps_small_frames_and_skips_untimed_ones(clip):
    untimed = av.VideoFrame.from_ndarray(clip[0], format="rgb24")
    submitted = []
    await drain_video(
        FakeRemoteTrack([untimed, camera_frame(clip[1], 1)], delay=0.05),
        lambda image, pts, tb: submitted.append((image.shape, pts)),
        512,
        lambda: None,
    )
    assert submitted == [((512, 512, 3), 3000)]


async def test_a_slow_conversion_drops_frames_instead_of_queueing_them(clip, monkeypatch):
    """The first conversion blocks until the reader has read all 40 frames: a reader
    that waited for conversions would never get there."""
    started, gate = threading.Event(), threading.Event()

    def blocked(frame, max_short_side):
        started.set()
        gate.wait(10)
        return to_engine_input(frame, max_short_side)

    monkeypatch.setattr(tracks, "to_engine_input", blocked)
    submitted: list[int] = []

    class FakeCamera(FakeRemoteTrack):
        async def recv(self) -> av.VideoFrame:  # type: ignore[override]
            if len(self._frames) == 39:  # the worker holds frame 0
                await asyncio.to_thread(started.wait, 10)
            if not self._frames:
                gate.set()
                deadline = time.monotonic() + 10
                while len(submitted) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            return await super().recv()

    frames = [camera_frame(clip[i % len(clip)], i) for i in range(40)]
    await drain_video(FakeCamera(frames), lambda image, pts, tb: submitted.append(pts), 512, lambda: None)
    assert submitted == [0, 39 * 3000]  # the one in progress, then the newest; 38 dropped


# ---- StylizedFanOut -------------------------------------------------------------------------


class FakeEngineSession:
    """Hands out the given engine outputs, then reports the session closed."""

    def __init__(self, outs: list[FrameOut], delay: float = 0.02) -> None:
        self._outs = list(outs)
        self._delay = delay

    async def recv(self) -> FrameOut:
        await asyncio.sleep(self._delay)
        if not self._outs:
            raise SessionClosed("s")
        return self._outs.pop(0)


def out_frame(image: np.ndarray, pts: int) -> FrameOut:
    return FrameOut(session_id="s", image=image, pts=pts, time_base=TB, t_in=0.0, t_out=0.0, prompt_seq=0)


async def test_fanout_gives_every_track_its_own_i420_frame_built_off_the_loop(clip, monkeypatch):
    built_on: list[str] = []
    original = tracks._frames_for

    def spy(job):
        built_on.append(threading.current_thread().name)
        return original(job)

    monkeypatch.setattr(tracks, "_frames_for", spy)
    # Out-of-order output (pts 3000 after 6000) is not sent: time never goes backwards.
    outs = [out_frame(clip[0], 0), out_frame(clip[1], 6000), out_frame(clip[2], 3000), out_frame(clip[3], 9000)]
    fanout = StylizedFanOut(FakeEngineSession(outs), Histogram(), Counter())  # type: ignore[arg-type]
    subscribers = [fanout.subscribe() for _ in range(3)]
    received: dict[int, list[av.VideoFrame]] = {i: [] for i in range(3)}

    async def read(i: int) -> None:
        while True:
            try:
                received[i].append(await subscribers[i].recv())
            except MediaStreamError:
                return

    readers = [asyncio.create_task(read(i)) for i in range(3)]
    await fanout.run()
    await asyncio.gather(*readers)
    assert set(built_on) == {"livestyle-fanout"} and "livestyle-fanout" not in worker_threads()
    for frames in received.values():
        assert [f.pts for f in frames] == [0, 6000, 9000]
        assert all(f.format.name == "yuv420p" and f.time_base == TB for f in frames)
    for column in zip(*received.values(), strict=True):
        assert len({id(f) for f in column}) == 3  # never one frame shared by two encoders
    # the colour conversion matches swscale's (what the encoder would have done)
    for frame, source in zip(received[0], [clip[0], clip[1], clip[3]], strict=True):
        assert np.abs(frame.to_ndarray(format="rgb24").astype(int) - source).mean() < 3


async def test_a_track_that_left_gets_no_more_frames(clip):
    outs = [out_frame(clip[i], i * 3000) for i in range(4)]
    fanout = StylizedFanOut(FakeEngineSession(outs, delay=0.05), Histogram(), Counter())  # type: ignore[arg-type]
    stays, leaves = fanout.subscribe(), fanout.subscribe()
    got: list[int] = []

    async def read() -> None:
        while True:
            try:
                got.append((await stays.recv()).pts)
            except MediaStreamError:
                return

    reader = asyncio.create_task(read())
    running = asyncio.create_task(fanout.run())
    first = await asyncio.wait_for(leaves.recv(), 5)
    fanout.unsubscribe(leaves)
    with pytest.raises(MediaStreamError):
        await leaves.recv()
    await running
    await reader
    assert first.pts == 0 and got == [0, 3000, 6000, 9000]
