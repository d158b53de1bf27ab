"""Cheaper encoder settings for the stylized stream the server sends (one encoder per
viewer), on aiortc's own VP8 and H.264 encoders.

aiortc 1.16 already encodes for real time: VP8 with deadline=realtime, cpu-used=-6,
lag-in-frames=0, CBR with a 1 s buffer and keyframes only on request (libwebrtc's
settings); H.264 with tune=zerolatency (no B-frames, no lookahead) and ABR. Two of its
choices cost encode time without buying quality for this stream (measured at 512x512 on
a DAVIS clip: `python -m bench.transport encode`, results in docs/transport.md):

- VP8 noise-sensitivity=4 runs libvpx's temporal denoiser, meant for camera noise; the
  engine's output has none. Here it is off.
- H.264 runs x264's default preset (medium). Here: veryfast (PSNR close to medium's), on one thread
  instead of x264's sliced threads, so each viewer's encoder keeps to one core.

Everything else (bitrates, which follow the receiver's REMB; keyframe interval;
packetisation) stays aiortc's. `install_realtime_encoders()` makes every RTCRtpSender
created afterwards use these encoders.
"""

from __future__ import annotations

import fractions
import multiprocessing
from collections.abc import Iterator

import av
from aiortc import rtcrtpsender
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import MAX_FRAME_RATE, H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

from signaling.jitter import aiortc_is_pinned


def _outdated(codec: VideoCodecContext, frame: av.VideoFrame, bitrate: int) -> bool:
    """aiortc's rule for reopening an encoder: another frame size, or a target bitrate
    more than 10 % off the one it was opened with."""
    opened_at = codec.bit_rate or bitrate
    return frame.width != codec.width or frame.height != codec.height or abs(bitrate - opened_at) / opened_at > 0.1


def open_vp8(width: int, height: int, bitrate: int) -> VideoCodecContext:
    """A libvpx context with aiortc's options but the denoiser (opened on first encode)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "0",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
    return codec


def open_h264(width: int, height: int, bitrate: int) -> VideoCodecContext:
    """An x264 context with aiortc's options plus the veryfast preset on one thread."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.framerate = fractions.Fraction(MAX_FRAME_RATE, 1)
    codec.time_base = fractions.Fraction(1, MAX_FRAME_RATE)
    codec.options = {"level": "31", "tune": "zerolatency", "preset": "veryfast"}
    codec.profile = "Baseline"
    codec.thread_count = 1
    return codec


class RealtimeVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder, with its libvpx context opened here (before aiortc's
    encode() would open one with its own options)."""

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if self.codec is None or _outdated(self.codec, frame, self.target_bitrate):
            self.codec = open_vp8(frame.width, frame.height, self.target_bitrate)
        return super().encode(frame, force_keyframe)


class RealtimeH264Encoder(H264Encoder):
    """aiortc's H.264 encoder, with its x264 context opened here."""

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        if self.codec is None or _outdated(self.codec, frame, self.target_bitrate):
            self.buffer_data, self.buffer_pts = b"", None
            self.codec = open_h264(frame.width, frame.height, self.target_bitrate)
        yield from super()._encode_frame(frame, force_keyframe)


def realtime_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    """Stands in for aiortc.codecs.get_encoder in aiortc.rtcrtpsender."""
    mime = codec.mimeType.lower()
    if mime == "video/vp8":
        return RealtimeVp8Encoder()
    if mime == "video/h264":
        return RealtimeH264Encoder()
    return get_encoder(codec)


def install_realtime_encoders() -> bool:
    """Idempotent; True when installed. On an aiortc other than the pinned version it
    logs a warning and leaves aiortc's encoders in place."""
    if rtcrtpsender.get_encoder is realtime_encoder:
        return True
    if not aiortc_is_pinned("its own encoder settings"):
        return False
    rtcrtpsender.get_encoder = realtime_encoder  # type: ignore[attr-defined]
    return True
