"""A video jitter buffer for aiortc's receiver that releases a frame as soon as it is
complete, instead of when the first packet of the next frame arrives.

aiortc 1.16's `JitterBuffer._remove_frame` only knows a frame has ended when a packet
with another RTP timestamp shows up, so every received video frame waits one frame
interval (33 ms at 30 fps) in each receiving hop. A sender marks the last packet of a
frame with the RTP marker bit (RFC 3550 section 5.1; RFC 7741 section 4.1 for VP8,
RFC 6184 section 5.1 for H.264), so a frame is complete once every packet from its first
one up to the marked one is present. The timestamp rule stays as the fallback for a
sender that never sets the marker.

`install_marker_release()` puts this buffer behind every video RTCRtpReceiver created
afterwards (audio keeps aiortc's own). It patches one name in `aiortc.rtcrtpreceiver`,
so it refuses to run on any aiortc other than the pinned one.
"""

from __future__ import annotations

import logging

import aiortc
from aiortc import rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

PINNED_AIORTC = "1.16.0"
VIDEO_CAPACITY = 512
"""Packets held per video stream: aiortc's own capacity for video."""
MAX_MISORDER = 100
"""A packet this far behind the oldest one held means the sender restarted its sequence
numbers (aiortc's rule): start over and ask for a keyframe."""


def _seq_distance(a: int, b: int) -> int:
    """b - a modulo 2**16."""
    return (b - a) & 0xFFFF


class MarkerJitterBuffer:
    """Reassembles one video stream's RTP packets into encoded frames, in sequence order.

    The same interface as aiortc's JitterBuffer: `add(packet)` stores a packet (its
    depayloaded bytes in `packet._data`) and returns `(pli, frame)`, where `frame` is the
    oldest frame that became releasable, if any, and `pli` asks for a keyframe because
    packets had to be thrown away. A frame is released only when every sequence number
    from its first packet to its last is present, so a lost packet holds the stream until
    its retransmission arrives (aiortc sends NACKs) or `capacity` newer packets push it
    out, which drops the broken frames and asks for a keyframe, as aiortc does.

    At most one frame comes out per packet (the receiver's contract); when a late
    packet completes several frames, the rest follow with the next packets. Work per
    packet is constant on average, whatever a sender does (scans resume where the last
    one stopped), so a hostile stream costs no more than aiortc's own buffer.
    """

    def __init__(self, capacity: int = VIDEO_CAPACITY) -> None:
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of 2 >= 2, got {capacity}")
        self._capacity = capacity
        self._packets: list[RtpPacket | None] = [None] * capacity
        self._origin: int | None = None
        """Sequence number of the oldest slot."""
        self._end = 0
        """Slots from the origin to just past the newest packet held."""
        self._synced = True
        """The origin is a frame's first packet (False after packets were dropped, until a
        frame start is found)."""
        self._scan = 0
        """Where the next scan resumes. In sync: slots before it hold the origin's frame
        (present, its timestamp, no marker). Out of sync: no slot before it is provably a
        frame start."""
        self._before: RtpPacket | None = None
        """The last packet dropped, to tell whether the origin starts a frame; None when
        that slot was empty."""
        self._at_start = True
        """Nothing released or dropped yet, so an earlier packet may still arrive."""

    @property
    def capacity(self) -> int:
        return self._capacity

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        pli = False
        if self._origin is None:
            self._origin = seq
        ahead = _seq_distance(self._origin, seq)
        behind = _seq_distance(seq, self._origin)
        if behind < ahead:  # older than the oldest slot
            if behind >= MAX_MISORDER:
                self._reset(seq)
                pli = True
            elif self._at_start and behind + self._end <= self._capacity:
                # The stream's first packets arrived out of order: the window grows back.
                self._origin, self._end, self._scan = seq, self._end + behind, 0
            else:
                return False, self._pop_frame()  # released or dropped already (a late duplicate)
        elif ahead >= self._capacity:
            self._drop(ahead - self._capacity + 1)
            pli = True
        offset = _seq_distance(self._origin, seq)
        slot = seq % self._capacity
        held = self._packets[slot]
        if held is None or held.sequence_number != seq:  # a duplicate keeps the first copy
            self._packets[slot] = packet
            self._end = max(self._end, offset + 1)
            if not self._synced and offset < self._scan:
                # Only this slot and the next can have become a frame start.
                starts = (n for n in (offset, offset + 1) if n < self._capacity and self._starts_frame(n))
                self._scan = next(starts, self._scan)
        return pli, self._pop_frame()

    # ---- internals ---------------------------------------------------------------------------

    def _at(self, offset: int) -> RtpPacket | None:
        assert self._origin is not None
        return self._packets[(self._origin + offset) % self._capacity]

    def _reset(self, seq: int) -> None:
        self._packets = [None] * self._capacity
        self._origin = seq
        self._end = self._scan = 0
        self._synced = True
        self._before = None
        self._at_start = True

    def _drop(self, count: int) -> None:
        """Forget the `count` oldest slots (their frames can no longer be completed)."""
        assert self._origin is not None
        self._before = self._at(count - 1) if 0 < count <= self._end else None
        cleared = min(count, self._end)  # slots past the newest packet are empty already
        first = self._origin % self._capacity
        head = min(cleared, self._capacity - first)  # the ring wraps at most once
        self._packets[first : first + head] = [None] * head
        self._packets[: cleared - head] = [None] * (cleared - head)
        self._origin = (self._origin + count) & 0xFFFF
        self._end = max(0, self._end - count)
        # What was known of the slots kept still holds: none of them is a provable start.
        # With none kept, only a slot next to a packet still to come can be one.
        self._scan = max(0, self._scan - count) if self._end else (0 if self._starts_frame(0) else self._capacity)
        self._synced = False
        self._at_start = False

    def _starts_frame(self, offset: int) -> bool:
        """Whether the slot `offset` after the origin is provably a frame's first packet:
        the packet before it ends a frame (marker bit, or the timestamp changes)."""
        prev = self._before if offset == 0 else self._at(offset - 1)
        if prev is None:
            return False
        if prev.marker:
            return True  # even if this slot's packet has not arrived yet
        packet = self._at(offset)
        return packet is not None and packet.timestamp != prev.timestamp

    def _sync(self) -> bool:
        """After a drop: move the origin to the first frame start held, dropping the
        broken frame's remains before it. False while none is held."""
        if self._synced:
            return True
        last = min(self._end, self._capacity - 1)  # one past the newest packet may start a frame
        while self._scan <= last:
            if self._starts_frame(self._scan):
                self._drop(self._scan)
                self._synced, self._scan = True, 0
                return True
            self._scan += 1
        return False

    def _frame_size(self) -> int | None:
        """Packets in the frame at the origin when all of them are here, else None."""
        first = self._at(0)
        if first is None:
            return None
        while self._scan < self._end:
            packet = self._at(self._scan)
            if packet is None:
                return None  # a hole: wait until it is filled or pushed out
            if packet.timestamp != first.timestamp:
                return self._scan  # no marker: the next frame's first packet ended this one
            if packet.marker:
                return self._scan + 1
            self._scan += 1
        return None  # not finished yet (or one frame fills the buffer: newer packets push it out)

    def _pop_frame(self) -> JitterFrame | None:
        while self._sync():
            size = self._frame_size()
            if size is None:
                return None
            frame = self._take(size)
            if frame.data:
                return frame
            # padding only, no media: skip it and look at what follows
        return None

    def _take(self, count: int) -> JitterFrame:
        packets = [self._at(offset) for offset in range(count)]
        self._drop(count)
        self._synced, self._scan = True, 0
        return JitterFrame(
            data=b"".join(p._data for p in packets),  # type: ignore[union-attr]
            timestamp=packets[0].timestamp,  # type: ignore[union-attr]
        )


def _receiver_jitter_buffer(
    capacity: int, prefetch: int = 0, is_video: bool = False
) -> MarkerJitterBuffer | JitterBuffer:
    """Stands in for the JitterBuffer class in aiortc.rtcrtpreceiver (same arguments)."""
    if is_video:
        return MarkerJitterBuffer(capacity)
    return JitterBuffer(capacity, prefetch=prefetch, is_video=is_video)


def aiortc_is_pinned(what: str) -> bool:
    """Whether the installed aiortc is the one these patches were written against; if
    not, a warning says that `what` stays as aiortc has it."""
    if aiortc.__version__ == PINNED_AIORTC:
        return True
    log.warning("aiortc %s is not the pinned %s: keeping %s", aiortc.__version__, PINNED_AIORTC, what)
    return False


def install_marker_release() -> bool:
    """Make every video RTCRtpReceiver created from now on release frames on their
    marker bit. Idempotent; True when installed (now or before). On an aiortc other than
    the pinned version it logs a warning and changes nothing (aiortc's own rule stays)."""
    if rtcrtpreceiver.JitterBuffer is _receiver_jitter_buffer:
        return True
    if not aiortc_is_pinned("its jitter buffer (video frames wait for the next frame's first packet)"):
        return False
    rtcrtpreceiver.JitterBuffer = _receiver_jitter_buffer  # type: ignore[assignment,misc]
    return True
