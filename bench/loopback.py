"""A WebRTC load client: plays frames as a live 30 fps camera track (each stamped with its
index in a way that survives stylization and compression), sends them to a livestyle
server over aiortc and measures what comes back. Used by `livestyle bench` (webrtc
scenario) and by the tests."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiohttp import ClientSession
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from signaling.jitter import install_marker_release

VIDEO_CLOCK = 90_000
MARK_BITS = 12
MARK_CELL = 32
MARK_Y = 512 - MARK_CELL  # bottom row of the 512x512 frame


def read_clip(path: Path) -> list[np.ndarray]:
    """Every frame of a video file as RGB uint8 arrays."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def ping_pong(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Loop a short clip without a cut: forwards then backwards."""
    return frames + frames[-2:0:-1]


def stamp(image: np.ndarray, number: int) -> np.ndarray:
    """Write `number` as black/white cells in the bottom row, with a black and a white
    reference cell first (so decoding adapts to whatever palette the style uses)."""
    out = image.copy()
    cells = [0, 255] + [255 if (number >> b) & 1 else 0 for b in range(MARK_BITS)]
    for i, value in enumerate(cells):
        out[MARK_Y : MARK_Y + MARK_CELL, i * MARK_CELL : (i + 1) * MARK_CELL] = value
    return out


def read_stamp(image: np.ndarray) -> int | None:
    """Inverse of stamp() on a (stylized, compressed) 512x512 frame; None if unreadable."""
    if image.shape[:2] != (512, 512):
        return None
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    m = MARK_CELL // 4
    values = [
        float(luma[MARK_Y + m : MARK_Y + MARK_CELL - m, i * MARK_CELL + m : (i + 1) * MARK_CELL - m].mean())
        for i in range(MARK_BITS + 2)
    ]
    dark, light = values[0], values[1]
    if light - dark < 30:
        return None
    threshold = (dark + light) / 2
    return sum(1 << b for b, v in enumerate(values[2:]) if v > threshold)


class ClipTrack(MediaStreamTrack):
    """A camera that plays frames at `fps` in real time, stamping each with its index."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: int = 30, mark: bool = True) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.mark = mark
        self.sent_at: dict[int, float] = {}  # pts -> monotonic send time
        self.sent_index: dict[int, int] = {}  # pts -> frame index
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = self._index
        self._index += 1
        image = self.frames[i % len(self.frames)]
        if self.mark:
            image = stamp(image, i)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i * (VIDEO_CLOCK // self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.sent_at[frame.pts] = time.monotonic()
        self.sent_index[frame.pts] = i
        return frame


@dataclass
class Received:
    t: float
    pts: int
    image: np.ndarray


@dataclass
class LoopbackClient:
    """An aiortc peer that streams a track to the server and records what comes back."""

    base_url: str
    track: MediaStreamTrack
    prompt: str | None = None
    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    received: list[Received] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    answer: dict = field(default_factory=dict)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    _message_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, http: ClientSession, codec: str | None = None) -> None:
        """codec: 'VP8' or 'H264' to prefer one (default: aiortc's order)."""
        install_marker_release()  # frames come out on their marker packet, as on the server
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        if codec is not None:
            caps = RTCRtpSender.getCapabilities("video").codecs
            preferred = [c for c in caps if c.mimeType.lower() == f"video/{codec.lower()}"]
            if not preferred:
                raise ValueError(f"codec {codec} is not available here")
            transceiver.setCodecPreferences(preferred + [c for c in caps if c.mimeType == "video/rtx"])
        self.channel = self.pc.createDataChannel("control")
        self.channel.on("open", self._channel_open.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.prompt is not None:
            body["prompt"] = self.prompt
        async with http.post(f"{self.base_url}/offer", json=body) as resp:
            self.answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer failed {resp.status}: {self.answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], self.answer["type"]))
        await asyncio.wait_for(self._channel_open.wait(), 10)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame) and frame.pts is not None:
                self.received.append(Received(time.monotonic(), frame.pts, frame.to_ndarray(format="rgb24")))

    def _on_message(self, raw: str) -> None:
        self.messages.append(json.loads(raw))
        self._message_event.set()

    def send(self, **msg: object) -> None:
        self.channel.send(json.dumps({"v": 1, **msg}))

    async def wait_message(self, predicate, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; got {self.messages[-5:]}")
            self._message_event.clear()
            try:
                await asyncio.wait_for(self._message_event.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"received {len(self.received)} of {count} frames")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


def pts_latencies(track: ClipTrack, received: list[Received]) -> tuple[list[float], int]:
    """Send->receive latency (ms) per received frame, matched by pts.

    Each aiortc hop rebases RTP timestamps (and rounds them by a tick or two), so a
    received pts is the sent pts plus an unknown constant. The frame-id stamps fix that
    constant (median over stamped frames); then every frame is matched by its pts alone.
    Returns (latencies, number of stamped frames whose pts match agrees with the stamp)."""
    step = VIDEO_CLOCK // track.fps
    stamped = [(r, read_stamp(r.image)) for r in received]
    offsets = sorted(r.pts - i * step for r, i in stamped if i is not None)
    if not offsets:
        return [], 0
    offset = offsets[len(offsets) // 2]
    latencies = []
    agree = 0
    for r, stamp_index in stamped:
        index = round((r.pts - offset) / step)
        pts = index * step
        if pts in track.sent_at:
            latencies.append((r.t - track.sent_at[pts]) * 1000)
        agree += stamp_index is not None and stamp_index == index % (1 << MARK_BITS)
    return latencies, agree
