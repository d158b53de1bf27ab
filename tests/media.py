"""Test media: the real DAVIS clips, and the WebRTC load client (bench/loopback.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.loopback import (  # noqa: F401 - re-exported for the tests
    MARK_Y,
    ClipTrack,
    LoopbackClient,
    Received,
    ping_pong,
    pts_latencies,
    read_clip,
    read_stamp,
    stamp,
)

DAVIS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis"


def davis_clip(name: str = "blackswan", size: int = 512) -> list[np.ndarray]:
    """All frames of a DAVIS clip as RGB uint8 arrays."""
    path = DAVIS_DIR / f"{name}.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"DAVIS clip {path} is missing (expected ../shared/data/davis)")
    frames = read_clip(path)
    assert frames and frames[0].shape == (size, size, 3)
    return frames
