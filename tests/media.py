"""Test media: the real DAVIS clips, and the WebRTC load client (bench/loopback.py)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from bench.loopback import (  # noqa: F401 - re-exported for the tests
    MARK_Y,
    ClipTrack,
    LoopbackClient,
    Received,
    pts_latencies,
    read_stamp,
    stamp,
)

DAVIS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis"


def davis_clip(name: str = "blackswan", size: int = 512) -> list[np.ndarray]:
    """All frames of a DAVIS clip as RGB uint8 arrays."""
    path = DAVIS_DIR / f"{name}.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"DAVIS clip {path} is missing (expected ../shared/data/davis)")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert frames and frames[0].shape == (size, size, 3)
    return frames


def ping_pong(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Loop a short clip without a cut: forwards then backwards."""
    return frames + frames[-2:0:-1]
