"""The marker-bit jitter buffer (signaling/jitter.py), fed RTP packets directly."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from fractions import Fraction

import aiortc
import av
import numpy as np
import pytest
from aiortc import rtcrtpreceiver
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st
from media import davis_clip

from signaling.jitter import MAX_MISORDER, VIDEO_CAPACITY, MarkerJitterBuffer, install_marker_release

pytestmark = pytest.mark.unit

TS_STEP = 3000  # 90 kHz clock at 30 fps


def rtp(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF)
    packet.marker = int(marker)
    packet.payload = data
    packet._data = data  # type: ignore[attr-defined]  # what the receiver's depayload leaves there
    return packet


@dataclass
class Sent:
    """One encoded frame as the packets a sender puts on the wire."""

    ts: int
    packets: list[RtpPacket]

    @property
    def data(self) -> bytes:
        return b"".join(p._data for p in self.packets)  # type: ignore[attr-defined]


def stream(
    sizes: list[int], first_seq: int = 1000, marker: bool = True, first_ts: int = 90_000, tag: str = ""
) -> list[Sent]:
    """Frames of `sizes` packets each, consecutive sequence numbers from first_seq; every
    packet's bytes name its frame and index so a released frame shows what it holds."""
    frames, seq = [], first_seq
    for f, n in enumerate(sizes):
        ts = first_ts + f * TS_STEP
        packets = [rtp(seq + i, ts, marker and i == n - 1, f"<{tag}{f}.{i}>".encode()) for i in range(n)]
        frames.append(Sent(ts, packets))
        seq += n
    return frames


def feed(buffer, packets):
    """Add packets in order; returns [(index of the packet that released it, frame), ...] and
    whether any add asked for a keyframe."""
    out, pli = [], False
    for i, packet in enumerate(packets):
        flag, frame = buffer.add(packet)
        pli |= flag
        if frame is not None:
            out.append((i, frame))
    return out, pli


@pytest.fixture
def receiver_buffer():
    """What an RTCRtpReceiver builds for video once the server installed the patch."""
    assert install_marker_release()
    return rtcrtpreceiver.JitterBuffer(capacity=VIDEO_CAPACITY, is_video=True)


# ---- the release rule ----------------------------------------------------------------------


def test_stock_aiortc_holds_a_complete_frame_until_the_next_one_starts():
    """Why this module exists; if a new aiortc fixes it, the patch can go."""
    frames = stream([3, 2])
    out, _ = feed(JitterBuffer(capacity=VIDEO_CAPACITY, is_video=True), [*frames[0].packets, frames[1].packets[0]])
    assert [i for i, _ in out] == [3]  # released only by the next frame's first packet


def test_receiver_releases_a_frame_on_its_marker_packet(receiver_buffer):
    frames = stream([3, 1, 4])
    packets = [p for f in frames for p in f.packets]
    out, pli = feed(receiver_buffer, packets)
    assert [i for i, _ in out] == [2, 3, 7]  # each at its own last packet
    assert [f.data for _, f in out] == [f.data for f in frames]
    assert [f.timestamp for _, f in out] == [f.ts for f in frames]
    assert not pli


@pytest.mark.parametrize("codec_name", ["VP8", "H264"])
def test_real_encoder_packets_decode_frame_by_frame(receiver_buffer, codec_name):
    """aiortc's own encoder and packetiser on a DAVIS clip: every frame is released by its
    last packet and decodes to the picture that was sent."""
    codec = RTCRtpCodecParameters(mimeType=f"video/{codec_name}", clockRate=90_000, payloadType=96)
    encoder, decoder = get_encoder(codec), get_decoder(codec)
    clip = davis_clip("blackswan")[:6]
    seq, released_at, decoded, last_packets = 65_530, [], [], []  # wraps around 65535 -> 0
    for n, image in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = n * TS_STEP, Fraction(1, 90_000)
        payloads, ts = encoder.encode(frame, force_keyframe=n == 0)
        for i, payload in enumerate(payloads):
            packet = rtp(seq, ts, i == len(payloads) - 1, b"")
            packet._data = depayload(codec, payload)  # type: ignore[attr-defined]
            seq += 1
            _, out = receiver_buffer.add(packet)
            if out is not None:
                released_at.append((n, i == len(payloads) - 1))
                decoded += decoder.decode(out)
        last_packets.append(len(payloads))
    assert released_at == [(n, True) for n in range(len(clip))], f"packets per frame {last_packets}"
    assert len(decoded) == len(clip)
    for image, got in zip(clip, decoded, strict=True):
        assert np.abs(got.to_ndarray(format="rgb24").astype(int) - image).mean() < 12


def test_a_sender_without_marker_bits_falls_back_to_the_next_frame_rule(receiver_buffer):
    frames = stream([2, 3, 1], marker=False)
    packets = [p for f in frames for p in f.packets]
    out, _ = feed(receiver_buffer, packets)
    assert [i for i, _ in out] == [2, 5]  # by the first packet of the following frame
    assert [f.data for _, f in out] == [f.data for f in frames[:2]]


# ---- reordering, wrap-around, duplicates ----------------------------------------------------


def test_reordered_packets_release_the_frame_when_the_last_one_arrives(receiver_buffer):
    a, b = stream([4, 2])
    order = [a.packets[0], a.packets[3], a.packets[2], b.packets[1], a.packets[1], b.packets[0]]
    out, _ = feed(receiver_buffer, order)
    assert [(i, f.data) for i, f in out] == [(4, a.data), (5, b.data)]


def test_reordered_start_of_the_stream_keeps_the_first_frame_whole(receiver_buffer):
    (a,) = stream([3])
    out, _ = feed(receiver_buffer, [a.packets[1], a.packets[0], a.packets[2]])
    assert [(i, f.data) for i, f in out] == [(2, a.data)]


def test_sequence_numbers_wrap_around(receiver_buffer):
    frames = stream([3, 3, 3, 3], first_seq=65_532)
    assert {p.sequence_number for p in frames[1].packets} == {0, 1, 65535}
    packets = [p for f in frames for p in f.packets]
    out, pli = feed(receiver_buffer, packets)
    assert [f.data for _, f in out] == [f.data for f in frames] and not pli
    # and out of order across the wrap
    frames = stream([2, 2], first_seq=65_535)
    buffer = MarkerJitterBuffer()
    out, _ = feed(buffer, [frames[0].packets[0], frames[0].packets[1], frames[1].packets[1], frames[1].packets[0]])
    assert [f.data for _, f in out] == [f.data for f in frames]


def test_duplicates_are_released_once(receiver_buffer):
    a, b = stream([2, 2])
    order = [a.packets[0], a.packets[0], a.packets[1], a.packets[1], a.packets[0], b.packets[0], b.packets[1]]
    out, _ = feed(receiver_buffer, order)
    assert [(i, f.data) for i, f in out] == [(2, a.data), (6, b.data)]


# ---- loss ----------------------------------------------------------------------------------


def test_a_hole_holds_its_frame_and_the_following_ones_until_retransmitted(receiver_buffer):
    frames = stream([2, 3, 1, 1])
    lost = frames[1].packets[1]
    packets = [p for f in frames for p in f.packets if p is not lost]
    out, pli = feed(receiver_buffer, packets)
    assert [f.data for _, f in out] == [frames[0].data]  # nothing with a hole, nothing out of order
    assert not pli
    # The retransmission completes frame 1; the frames behind it follow, one per packet.
    out, _ = feed(receiver_buffer, [lost, lost, *stream([1], first_seq=1007)[0].packets])
    assert [f.data for _, f in out] == [frames[1].data, frames[2].data, frames[3].data]


def test_a_lost_first_packet_is_a_hole_too(receiver_buffer):
    frames = stream([1, 3, 1])
    lost = frames[1].packets[0]
    out, _ = feed(receiver_buffer, [p for f in frames for p in f.packets if p is not lost])
    assert [f.data for _, f in out] == [frames[0].data]
    out, _ = feed(receiver_buffer, [lost])
    assert [f.data for _, f in out] == [frames[1].data]


def test_a_lost_marker_packet_is_not_mistaken_for_a_missing_marker(receiver_buffer):
    frames = stream([2, 2, 2])
    lost = frames[0].packets[1]
    out, _ = feed(receiver_buffer, [p for f in frames for p in f.packets if p is not lost])
    assert out == []


def test_a_packet_that_never_comes_is_pushed_out_and_a_keyframe_requested():
    buffer = MarkerJitterBuffer(capacity=16)
    frames = stream([3] * 12)
    lost = frames[1].packets[1]
    packets = [p for f in frames for p in f.packets if p is not lost]
    out, pli = feed(buffer, packets)
    assert pli
    got = [f.data for _, f in out]
    assert frames[0].data == got[0] and frames[1].data not in got
    # What comes out after the skip is whole frames, in order, none of them broken.
    whole = [f.data for f in frames]
    assert all(g in whole for g in got) and got == sorted(got, key=whole.index)
    assert got[-1] == frames[-1].data


def test_packets_pushed_out_mid_frame_never_release_that_frame_partially():
    buffer = MarkerJitterBuffer(capacity=8)
    f0, f1, f2, f3, f4 = stream([3, 4, 4, 2, 2])  # sequence numbers 1000..1014
    by_seq = {p.sequence_number: p for f in (f0, f1, f2, f3, f4) for p in f.packets}
    # 1001 and 1005-1006 are lost; 1013 arrives early and pushes the window into frame 1,
    # whose remainder must not come out, nor frame 2 (its first packet's predecessor is
    # unknown, so nothing proves where it starts).
    order = [1000, 1002, 1003, 1004, 1013, 1007, 1008, 1009, 1010, 1011, 1012, 1014]
    out, pli = feed(buffer, [by_seq[s] for s in order])
    assert pli
    assert [f.data for _, f in out] == [f3.data, f4.data]


def test_a_sequence_number_jump_backwards_restarts_the_stream(receiver_buffer):
    old = stream([2, 2], first_seq=5000, tag="old")
    new = stream([2, 2], first_seq=5000 - MAX_MISORDER - 50, first_ts=500_000, tag="new")
    out, pli = feed(receiver_buffer, [p for f in old + new for p in f.packets])
    assert pli
    assert [f.data for _, f in out] == [f.data for f in old + new]


def test_padding_only_packets_are_skipped(receiver_buffer):
    a, b = stream([2, 1])
    padding = [rtp(1002, a.ts, False, b""), rtp(1003, a.ts, False, b"")]
    b.packets[0].sequence_number = 1004
    out, _ = feed(receiver_buffer, [*a.packets, *padding, *b.packets])
    assert [(i, f.data) for i, f in out] == [(1, a.data), (4, b.data)]


# ---- bounds ---------------------------------------------------------------------------------


def test_a_frame_that_never_ends_stays_within_capacity():
    buffer = MarkerJitterBuffer(capacity=32)
    endless = [rtp(i, 90_000, False, b"x") for i in range(1000)]  # one timestamp, no marker
    out, pli = feed(buffer, endless)
    assert out == [] and pli
    assert sum(p is not None for p in buffer._packets) <= 32
    # It recovers once the frame ends: the frame after it comes out, the endless one never.
    (after,) = stream([2], first_seq=1001, first_ts=93_000)
    out, _ = feed(buffer, [rtp(1000, 90_000, True, b"x"), *after.packets])
    assert [f.data for _, f in out] == [after.data]


def _hostile_streams() -> dict[str, list[RtpPacket]]:
    rng = random.Random(7)
    front_filling = []
    for base in range(0, 5000, 600):  # jump ahead, then fill the window from the front
        front_filling += [rtp(base + 511, 1000, False, b"x")] + [rtp(base + i, 1000, False, b"x") for i in range(511)]
    return {
        "one endless frame": [rtp(i, 1000, False, b"x") for i in range(5000)],
        "random garbage": [
            rtp(rng.randrange(65536), rng.choice([1, 2]), rng.random() < 0.01, b"x") for _ in range(5000)
        ],
        "front filling": front_filling,
        "jumps of twice the capacity": [rtp(i * 1022, 1000, False, b"x") for i in range(5000)],
        "newest first": [rtp(5000 - i, 90_000 + (5000 - i) // 3 * TS_STEP, i % 3 == 0, b"x") for i in range(5000)],
    }


@pytest.mark.parametrize("name", list(_hostile_streams()))
def test_work_per_packet_stays_constant_whatever_the_sender_does(name, monkeypatch):
    """Counted in slot reads, not time: every scan resumes where the last one stopped.
    (A buffer that rescans its window reads up to `capacity` slots per packet.)"""
    reads = 0
    original = MarkerJitterBuffer._at

    def counting(self, offset):
        nonlocal reads
        reads += 1
        return original(self, offset)

    monkeypatch.setattr(MarkerJitterBuffer, "_at", counting)
    packets = _hostile_streams()[name]
    feed(MarkerJitterBuffer(VIDEO_CAPACITY), packets)
    print(f"\n{name}: {reads / len(packets):.1f} slot reads per packet")
    assert reads / len(packets) < 8


@pytest.mark.parametrize("capacity", [0, 3, 100])
def test_capacity_must_be_a_power_of_two(capacity):
    with pytest.raises(ValueError, match="power of 2"):
        MarkerJitterBuffer(capacity)


@st.composite
def network(draw):
    """A stream of frames through a network that loses, duplicates and reorders."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=25))
    frames = stream(sizes, first_seq=draw(st.integers(0, 0xFFFF)), marker=draw(st.booleans()))
    packets = [p for f in frames for p in f.packets]
    lossy = draw(st.booleans())
    delivered = []
    for p in packets:
        if lossy and p is not packets[0] and draw(st.integers(0, 9)) == 0:
            continue
        delivered.append(p)
        if draw(st.integers(0, 9)) == 0:
            delivered.append(p)
    # Bounded reordering: each packet moves at most `window` places. The stream's first
    # packet comes first (the buffer takes the first packet it sees as the stream's start).
    window = draw(st.integers(0, 8))
    keys = [-1] + [i + draw(st.integers(0, window)) for i in range(1, len(delivered))]
    delivered = [p for _, p in sorted(zip(keys, delivered, strict=True), key=lambda kp: kp[0])]
    return frames, delivered, lossy


@given(network(), st.sampled_from([16, 64, 512]))
@settings(max_examples=300, deadline=None)
def test_fuzz_released_frames_are_whole_and_in_order(net, capacity):
    frames, delivered, lossy = net
    buffer = MarkerJitterBuffer(capacity)
    out, _ = feed(buffer, delivered)
    whole = [f.data for f in frames]
    got = [f.data for _, f in out]
    assert all(g in whole for g in got), "a frame came out with a hole or mixed with another"
    assert [whole.index(g) for g in got] == sorted({whole.index(g) for g in got}), "out of order or twice"
    assert sum(p is not None for p in buffer._packets) <= capacity
    if not lossy and sum(len(f.packets) for f in frames) <= capacity:
        # Nothing lost and it all fits: every frame comes out; frames still waiting
        # behind the one-per-packet rule are released by the packets that follow.
        last = frames[-1].packets[-1]
        drain = stream([1] * len(frames), first_seq=last.sequence_number + 1, first_ts=last.timestamp + 1, tag="d")
        more, _ = feed(buffer, [p for f in drain for p in f.packets])
        assert got + [f.data for _, f in more][: len(frames) - len(got)] == whole


# ---- install --------------------------------------------------------------------------------


def test_install_is_idempotent_and_only_touches_video():
    assert install_marker_release() and install_marker_release()
    assert isinstance(rtcrtpreceiver.JitterBuffer(capacity=512, is_video=True), MarkerJitterBuffer)
    audio = rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)
    assert type(audio) is JitterBuffer and audio._prefetch == 4


def test_install_refuses_an_unpinned_aiortc(monkeypatch, caplog):
    monkeypatch.setattr(rtcrtpreceiver, "JitterBuffer", JitterBuffer)  # as if never installed
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with caplog.at_level(logging.WARNING, logger="signaling.jitter"):
        assert install_marker_release() is False
    assert rtcrtpreceiver.JitterBuffer is JitterBuffer
    assert "1.17.0" in caplog.text and "1.16.0" in caplog.text


def test_a_receiver_built_after_install_uses_it():
    install_marker_release()

    class FakeTransport:
        state = "new"

    receiver = rtcrtpreceiver.RTCRtpReceiver("video", FakeTransport())  # type: ignore[arg-type]
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)  # type: ignore[attr-defined]
