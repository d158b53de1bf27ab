"""The server's encoder settings (signaling/encoders.py) on aiortc's encoders."""

from __future__ import annotations

import logging
from fractions import Fraction

import aiortc
import av
import numpy as np
import pytest
from aiortc import rtcrtpsender
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.g711 import PcmuEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from media import davis_clip

from signaling import encoders
from signaling.encoders import (
    RealtimeH264Encoder,
    RealtimeVp8Encoder,
    install_realtime_encoders,
    realtime_encoder,
)

pytestmark = pytest.mark.unit

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=97)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return davis_clip("blackswan")[:24]


def i420(image: np.ndarray, index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
    return frame


def round_trip_psnr(codec: RTCRtpCodecParameters, encoder, clip: list[np.ndarray]) -> float:
    """Encode the clip, depacketise through aiortc's own path, decode; mean PSNR in dB."""
    from aiortc.codecs import depayload

    decoder = get_decoder(codec)
    scores = []
    for n, image in enumerate(clip):
        payloads, ts = encoder.encode(i420(image, n), force_keyframe=n == 0)
        data = b"".join(depayload(codec, p) for p in payloads)
        for frame in decoder.decode(JitterFrame(data, ts)):
            err = np.mean((frame.to_ndarray(format="rgb24").astype(np.float32) - image) ** 2)
            scores.append(10 * np.log10(255**2 / err))
    assert len(scores) == len(clip)
    return float(np.mean(scores))


@pytest.mark.parametrize("codec", [VP8, H264], ids=["VP8", "H264"])
def test_realtime_settings_cost_no_quality(codec, clip):
    ours = round_trip_psnr(codec, realtime_encoder(codec), clip)
    stock = round_trip_psnr(codec, get_encoder(codec), clip)
    print(f"\n{codec.mimeType}: PSNR {ours:.2f} dB with the realtime settings, {stock:.2f} dB with aiortc's")
    assert ours > stock - 0.5


def test_vp8_keeps_its_settings_when_it_reopens(clip, monkeypatch):
    opened: list[dict[str, str]] = []
    original = encoders.open_vp8

    def spy(width: int, height: int, bitrate: int):
        codec = original(width, height, bitrate)
        opened.append({**codec.options, "bit_rate": str(codec.bit_rate)})  # PyAV clears them once open
        return codec

    monkeypatch.setattr(encoders, "open_vp8", spy)
    encoder = RealtimeVp8Encoder()
    assert encoder.encode(i420(clip[0], 0))[0]
    encoder.target_bitrate = 1_200_000  # the receiver's REMB asked for more
    assert encoder.encode(i420(clip[1], 1))[0]
    encoder.target_bitrate = 1_250_000  # within 10 %: no reopen (aiortc's rule)
    assert encoder.encode(i420(clip[2], 2))[0]
    assert [(o["bit_rate"], o["noise-sensitivity"], o["deadline"]) for o in opened] == [
        ("500000", "0", "realtime"),
        ("1200000", "0", "realtime"),
    ]


def x264_settings(payloads: list[bytes]) -> str:
    """x264 writes its settings into the stream (an SEI message): read them back."""
    blob = b"".join(payloads)
    start = blob.index(b"x264 - core")
    return blob[start : blob.index(b"\x00", start)].decode("ascii", "replace")


def test_h264_runs_veryfast_on_one_thread_also_after_a_size_change(clip):
    encoder = RealtimeH264Encoder()
    first = x264_settings(encoder.encode(i420(clip[0], 0), force_keyframe=True)[0])
    small = av.VideoFrame.from_ndarray(clip[1][:256, :256].copy(), format="rgb24").reformat(format="yuv420p")
    small.pts, small.time_base = 3000, Fraction(1, 90_000)
    second = x264_settings(encoder.encode(small, force_keyframe=True)[0])
    stock = x264_settings(get_encoder(H264).encode(i420(clip[0], 0), force_keyframe=True)[0])
    for settings in (first, second):
        # veryfast: subme=2, one reference frame; aiortc's default (medium): subme=7, ref=3
        assert " subme=2 " in settings and " ref=1 " in settings and " threads=1 " in settings
    assert " subme=7 " in stock and " ref=3 " in stock


def test_other_codecs_are_aiortcs():
    pcmu = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)
    assert isinstance(realtime_encoder(pcmu), PcmuEncoder)
    assert type(realtime_encoder(VP8)) is RealtimeVp8Encoder and type(realtime_encoder(H264)) is RealtimeH264Encoder


def test_install_is_idempotent_and_refuses_an_unpinned_aiortc(monkeypatch, caplog):
    monkeypatch.setattr(rtcrtpsender, "get_encoder", get_encoder)
    assert install_realtime_encoders() and install_realtime_encoders()
    assert rtcrtpsender.get_encoder is realtime_encoder
    monkeypatch.setattr(rtcrtpsender, "get_encoder", get_encoder)
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with caplog.at_level(logging.WARNING, logger="signaling.jitter"):
        assert install_realtime_encoders() is False
    assert rtcrtpsender.get_encoder is get_encoder and "1.17.0" in caplog.text
