"""Stylize a video file with the engine core (clip mode: batches of consecutive frames
of one stream, the paper's operating mode). The audio stream, if any, is copied.

The output is written to a hidden partial file next to the target and renamed over it only
once complete: an interrupted or failed run leaves no half-written video behind."""

from __future__ import annotations

import contextlib
import logging
import os
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
OUTPUT_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
"""Output file extensions and the container each one is written as (H.264 or MPEG-4 video)."""


@dataclass(frozen=True)
class FileResult:
    frames: int
    seconds: float
    """Wall time of the stylization loop (decode + engine + encode), warm-up excluded."""
    audio: bool

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def probe_video(path: Path) -> int | None:
    """Check that `path` holds video FFmpeg can decode (its first frame decodes), before any
    engine work; returns the frame count the container states, if any. Raises ValueError
    naming the file and what is wrong."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
                raise ValueError(f"input {path} has no video stream (it has {kinds})")
            stream = container.streams.video[0]
            if next(container.decode(stream), None) is None:
                raise ValueError(f"input {path}: its video stream has no frame that decodes")
            return stream.frames or None
    except av.FFmpegError as exc:
        raise ValueError(f"input {path} is not a video FFmpeg can read ({exc.strerror or exc})") from None


def partial_path(target: Path) -> Path:
    """Where the output is written until it is complete (hidden, next to the target)."""
    return target.with_name(f".{target.name}.partial")


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
        partial = partial_path(target)
        try:
            result = _run(core, source, partial, OUTPUT_FORMATS[target.suffix.lower()], on_progress, total_hint)
            os.replace(partial, target)
        finally:  # also on Ctrl-C (KeyboardInterrupt): nothing half-written stays behind
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return result
    finally:
        core.close()


def _run(
    core: EngineCore,
    source: Path,
    target: Path,
    container_format: str,
    on_progress: Callable[[int], None],
    total_hint: Callable[[int | None], None],
) -> FileResult:
    size = core.info.output_size
    batch: list[FrameIn] = []
    written = decoded = 0
    with av.open(str(source)) as src, av.open(str(target), "w", format=container_format) as dst:
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
