"""`livestyle stylize` on a real DAVIS clip with the tiny diffusion engine (CPU)."""

from fractions import Fraction

import av
import numpy as np
import pytest
from media import DAVIS_DIR

from server.cli import main

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(600)]


def with_audio(src, dst, frames: int) -> None:
    """A short copy of a DAVIS clip with a 440 Hz tone, to check the audio is copied."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("mpeg4", rate=24)
        vout.width = vout.height = 512
        vout.pix_fmt = "yuv420p"
        aout = out.add_stream("aac", rate=48000)
        for i, frame in enumerate(inp.decode(vin)):
            if i == frames:
                break
            frame.pts = i
            frame.time_base = Fraction(1, 24)
            for packet in vout.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        t = np.arange(int(48000 * frames / 24)) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 48000
            chunk.pts = start
            for packet in aout.encode(chunk):
                out.mux(packet)
        for stream in (vout, aout):
            for packet in stream.encode():
                out.mux(packet)


def test_stylize_a_davis_clip_with_the_tiny_model(tmp_path):
    source = tmp_path / "in.mp4"
    target = tmp_path / "out.mp4"
    with_audio(DAVIS_DIR / "goat.mp4", source, frames=10)
    code = main(
        ["stylize", str(source), str(target), "--prompt", "oil painting", "--model", "tiny", "--max-batch", "4"]
    )
    assert code == 0
    with av.open(str(target)) as out:
        video = out.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in out.decode(video)]
        assert (video.width, video.height) == (512, 512)
        assert len(out.streams.audio) == 1  # the tone was copied
    assert len(frames) == 10
    pts_source = None
    with av.open(str(source)) as inp:
        pts_source = [f.pts for f in inp.decode(video=0)]
    assert len(pts_source) == 10
    first = frames[0].astype(int)
    assert first.std() > 5  # a picture, not a blank frame


def test_stylize_reports_bad_input_clearly(tmp_path, capsys):
    code = main(["stylize", str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4"), "--prompt", "x"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
