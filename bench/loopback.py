"""A WebRTC load client: plays frames as a live 30 fps camera track, sends them to a
livestyle server over aiortc and measures what comes back. Used by `livestyle bench`
(webrtc scenario) and by the tests.

Which sent frame a received one is: the server keeps each frame's pts, but every aiortc
receiver rebases RTP timestamps to its first frame, so received pts = sent pts - C with a
per-session constant C. Two ways to fix C:

* anchored (no pixels needed, so it works with random weights): the track sends single
  probe frames until one comes back stylized, then streams. The first frame the client
  receives is a probe's, so C is that probe's pts. Probe k sits k * PROBE_OFFSET ticks off
  the 30 fps grid of the stream, so the streamed frames say which probe it was.
* stamps: each frame carries its index in black/white cells that survive the preview
  stylizer and compression (not random weights); the median offset of the readable ones.
  In anchored mode the stamps are the cross-check."""

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
PROBE_GAP = VIDEO_CLOCK  # pts between anchor probes (one second of media time)
PROBE_OFFSET = 300  # ticks: probe k sits k * PROBE_OFFSET off the stream's 3000-tick grid
MAX_PROBES = 5  # offsets 0..1200 stay distinct modulo the grid (and under half a step)
PTS_TOLERANCE = 100  # ticks a received pts may sit off its grid point (rebasing rounds)
CONNECT_S = 10.0  # seconds from the answer until the data channel must be open


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
    """A camera that plays frames at `fps` in real time, stamping each with its index.

    anchored: hold the stream back; each release_probe() sends one probe frame, and
    start_streaming() starts the real-time stream (see the module docstring)."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: int = 30, mark: bool = True, anchored: bool = False) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.step = VIDEO_CLOCK // fps
        self.mark = mark
        self.anchored = anchored
        self.sent_at: dict[int, float] = {}  # pts -> monotonic send time (streamed frames)
        self.sent_index: dict[int, int] = {}  # pts -> frame index (streamed frames)
        self.probes: list[tuple[int, float]] = []  # (pts, send time) of each probe sent
        self.stream_base = MAX_PROBES * PROBE_GAP if anchored else 0
        """pts of the first streamed frame (after every possible probe)."""
        self.stream_start: float | None = None
        """When the first streamed frame was due (monotonic)."""
        self._index = 0
        self._streaming = not anchored
        self._gate = asyncio.Event()

    def release_probe(self) -> None:
        if len(self.probes) >= MAX_PROBES:
            raise RuntimeError(f"at most {MAX_PROBES} anchor probes")
        self._gate.set()

    def start_streaming(self) -> None:
        self._streaming = True
        self._gate.set()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._streaming:
            await self._gate.wait()
            self._gate.clear()
        if not self._streaming:
            k = len(self.probes)
            pts = k * PROBE_GAP + k * PROBE_OFFSET
            self.probes.append((pts, time.monotonic()))
            return self._frame(self.frames[0], 0, pts)
        if self.stream_start is None:
            self.stream_start = time.monotonic()
        delay = self.stream_start + self._index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = self._index
        self._index += 1
        pts = self.stream_base + i * self.step
        frame = self._frame(self.frames[i % len(self.frames)], i, pts)
        self.sent_at[pts] = time.monotonic()
        self.sent_index[pts] = i
        return frame

    def _frame(self, image: np.ndarray, number: int, pts: int) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(stamp(image, number) if self.mark else image, format="rgb24")
        frame.pts = pts
        frame.time_base = Fraction(1, VIDEO_CLOCK)
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
        try:
            await asyncio.wait_for(self._channel_open.wait(), CONNECT_S)
        except TimeoutError:
            raise TimeoutError(self.not_connected()) from None

    def not_connected(self) -> str:
        """Why the data channel did not open, in terms a reader can act on."""
        ours = self.pc.localDescription.sdp.count("a=candidate:")
        theirs = str(self.answer.get("sdp", "")).count("a=candidate:")
        return (
            f"data channel not open {CONNECT_S:.0f} s after the answer: ICE {self.pc.iceConnectionState}, "
            f"{ours} candidate(s) in our offer, {theirs} in the server's answer"
        )

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

    async def anchor(self, first_timeout: float = 0.5) -> int:
        """Send probe frames one at a time, each waiting twice as long as the one before,
        until a stylized frame comes back; then start the stream (the track must be
        anchored). Stock aiortc receivers hold a frame until the next one arrives, so it
        takes a few probes there. Returns the number of probes sent."""
        track = self.track
        if not isinstance(track, ClipTrack) or not track.anchored:
            raise ValueError("anchor() needs an anchored ClipTrack")
        for k in range(MAX_PROBES):
            track.release_probe()
            try:
                await self.wait_frames(1, timeout=first_timeout * 2**k)
            except TimeoutError:
                continue
            track.start_streaming()
            return k + 1
        waited = first_timeout * (2**MAX_PROBES - 1)
        raise TimeoutError(f"no stylized frame came back for {MAX_PROBES} anchor probes in {waited:.1f} s")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


@dataclass(frozen=True)
class Match:
    """A received frame identified as a streamed one."""

    index: int
    sent: float
    received: float

    @property
    def latency_ms(self) -> float:
        return (self.received - self.sent) * 1000


@dataclass
class Matching:
    matches: list[Match]
    """Received frames that are streamed frames, in receive order."""
    method: str
    """'anchor' or 'stamps' (how the pts constant was fixed), or 'none'."""
    probe: int | None = None
    """Anchored: the probe whose stylized frame came back first."""
    stamps_read: int = 0
    """Matched frames whose stamp was readable..."""
    stamps_agree: int = 0
    """...and named the same frame as the pts match (a cross-check in anchored mode)."""


def match_frames(track: ClipTrack, received: list[Received]) -> Matching:
    """Which streamed frame each received frame is, by pts (see the module docstring)."""
    step = track.step
    if track.anchored:
        # Candidate constant: each probe's pts. Only the right one puts streamed frames on the grid.
        def on_grid(pts: int, offset: int) -> bool:
            rest = (pts + offset - track.stream_base) % step
            return pts + offset >= track.stream_base and min(rest, step - rest) <= PTS_TOLERANCE

        votes = [sum(on_grid(r.pts, p) for r in received) for p, _ in track.probes]
        if not votes or max(votes) == 0:
            return Matching([], "none")
        probe = votes.index(max(votes))
        offset, method = track.probes[probe][0], "anchor"
    else:
        stamped = [(r.pts, read_stamp(r.image)) for r in received]
        offsets = sorted(i * step - pts for pts, i in stamped if i is not None)
        if not offsets:
            return Matching([], "none")
        offset, probe, method = offsets[len(offsets) // 2], None, "stamps"
    result = Matching([], method, probe)
    for r in received:
        index = round((r.pts + offset - track.stream_base) / step)
        pts = track.stream_base + index * step
        if abs(r.pts + offset - pts) > PTS_TOLERANCE or pts not in track.sent_at:
            continue
        result.matches.append(Match(index, track.sent_at[pts], r.t))
        number = read_stamp(r.image)
        if number is not None:
            result.stamps_read += 1
            result.stamps_agree += number == index % (1 << MARK_BITS)
    return result


def pts_latencies(track: ClipTrack, received: list[Received]) -> tuple[list[float], int]:
    """(send->receive latency in ms per matched frame, stamps that agree with the match)."""
    matching = match_frames(track, received)
    return [m.latency_ms for m in matching.matches], matching.stamps_agree
