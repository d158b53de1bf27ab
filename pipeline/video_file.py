"""Stylize a video file with the engine core (clip mode: batches of consecutive frames
of one stream, the paper's operating mode). The audio stream, if any, is copied."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av

from pipeline.client import EngineSpec
from pipeline.core import EngineCore, StepResult
from pipeline.messages import AddSession, FrameIn, SessionError
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)
SESSION = "file"


@dataclass(frozen=True)
class FileResult:
    frames: int
    seconds: float
    """Wall time of the stylization loop (decode + engine + encode), warm-up excluded."""
    audio: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def stylize_file(
    spec: EngineSpec,
    source: Path,
    target: Path,
    prompt: str,
    *,
    on_progress: Callable[[int], None] = lambda _n: None,
    total_hint: Callable[[int | None], None] = lambda _n: None,
) -> FileResult:
    def progress(msg: str) -> None:
        log.info("warm-up: %s", msg)

    core = spec.build(EngineStats(), progress)
    try:
        core.warmup(progress)
        for event in core.execute(AddSession(SESSION, prompt)):
            if isinstance(event, SessionError):
                raise ValueError(f"prompt refused: {event.message}")
        return _run(core, source, target, on_progress, total_hint)
    finally:
        core.close()


def _run(
    core: EngineCore,
    source: Path,
    target: Path,
    on_progress: Callable[[int], None],
    total_hint: Callable[[int | None], None],
) -> FileResult:
    size = core.info.output_size
    batch: list[FrameIn] = []
    written = decoded = 0
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if src.streams.audio else None
        total_hint(vin.frames or None)
        rate = vin.average_rate or Fraction(30)
        vout = cast(av.VideoStream, dst.add_stream(_video_codec(), rate=rate))
        vout.width = vout.height = size
        vout.pix_fmt = "yuv420p"
        if vout.codec_context.name == "libx264":
            vout.options = {"crf": "18", "preset": "veryfast"}
        aout = dst.add_stream_from_template(ain) if ain is not None else None

        def write(result: StepResult) -> None:
            nonlocal written
            for out in result.outputs:
                frame = av.VideoFrame.from_ndarray(out.image, format="rgb24")
                frame.pts = out.pts
                frame.time_base = out.time_base
                for packet in vout.encode(frame):
                    dst.mux(packet)
                written += 1
            on_progress(written)

        t0 = time.monotonic()
        streams = [s for s in (vin, ain) if s is not None]
        for packet in src.demux(*streams):
            if packet.stream is ain:
                if packet.dts is not None and aout is not None:
                    packet.stream = aout
                    dst.mux(packet)
                continue
            for frame in packet.decode():
                if not isinstance(frame, av.VideoFrame):
                    continue
                tb = frame.time_base or vin.time_base or Fraction(1, 90000)
                pts = frame.pts if frame.pts is not None else decoded
                decoded += 1
                image = frame.to_ndarray(format="rgb24")
                batch.append(FrameIn(SESSION, image, pts, Fraction(tb.numerator, tb.denominator), time.monotonic()))
                if len(batch) == core.max_batch:
                    write(core.step(batch, one_per_session=False))
                    batch = []
        if batch:
            write(core.step(batch, one_per_session=False))
        write(core.flush())
        for packet in vout.encode():
            dst.mux(packet)
        seconds = time.monotonic() - t0
    return FileResult(frames=written, seconds=seconds, audio=ain is not None)
