"""Decoding an input and its stylized video side by side, as aligned RGB frame pairs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.preview import fit_square


@dataclass(frozen=True)
class Pair:
    index: int
    source: np.ndarray
    """The input frame, fitted to the stylized frame's geometry (the engine's centre crop)."""
    output: np.ndarray


def frame_count(path: Path) -> int | None:
    with av.open(str(path)) as container:
        return container.streams.video[0].frames or None


def _decode(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def align(source: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The input frame as the engine saw it: centre-cropped to a square and resized, when the
    output is square and the input is not its size (otherwise resized to the output's size)."""
    if source.shape == output.shape:
        return source
    h, w = output.shape[:2]
    if h == w:
        return fit_square(source, h)
    return cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA)


def pairs(source: Path, stylized: Path, max_frames: int | None = None) -> Iterator[Pair]:
    """Frame pairs in decode order, streamed (memory stays a few frames); stops at the shorter
    video or after `max_frames`."""
    for index, (src, out) in enumerate(zip(_decode(source), _decode(stylized), strict=False)):
        if max_frames is not None and index >= max_frames:
            return
        yield Pair(index, align(src, out), out)
