"""Offline clip runs: one stream, B consecutive frames per step, the core stepped on this
thread as fast as it takes them (offline clip throughput; latency engine-internal)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.loopback import ping_pong, read_clip
from bench.stats import latency_block
from pipeline.core import EngineCore
from pipeline.messages import AddSession, FrameIn, RemoveSession

TB = Fraction(1, 90_000)
NO_FRAMES = "no frame came out inside the measured window"


def load_frames(davis_dir: Path, clips: Sequence[str], size: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for name in clips:
        frames += ping_pong(read_clip(davis_dir / f"{name}.mp4"))  # no cut inside a clip
    if not frames:
        raise ValueError(f"no frames in the clips {', '.join(clips)} of {davis_dir}")
    if frames[0].shape[:2] != (size, size):
        frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
    return frames


def text_settings(backend: Any) -> dict[str, Any]:
    c = backend.config
    return {
        "mode": c.text_mode,
        "refresh": c.text_refresh,
        "representative_frame": c.representative_frame,
        "image_size": c.text_image_size,
        "tokens": c.text_tokens,
    }


def run_clip(core: EngineCore, frames: list[np.ndarray], batch: int, count: int, prompt: str) -> dict[str, Any]:
    """One stream, `batch` consecutive frames per step, as fast as the engine takes them."""
    sid = f"clip{batch}"
    core.execute(AddSession(sid, prompt))
    latencies: list[float] = []
    index = 0

    def feed() -> list[FrameIn]:
        nonlocal index
        now = time.monotonic()
        out = [FrameIn(sid, frames[(index + k) % len(frames)], (index + k) * 3000, TB, now) for k in range(batch)]
        index += batch
        return out

    for _ in range(2):  # settle (first refresh, allocator)
        core.step(feed(), one_per_session=False)
    core.flush()
    t0 = time.monotonic()
    while len(latencies) < count:
        latencies += [(o.t_out - o.t_in) * 1000 for o in core.step(feed(), one_per_session=False).outputs]
    latencies += [(o.t_out - o.t_in) * 1000 for o in core.flush().outputs]
    seconds = time.monotonic() - t0
    core.execute(RemoveSession(sid))
    bucket_for = getattr(core.backend, "bucket_for", None)
    return {
        "B": batch,
        "bucket": bucket_for(batch) if bucket_for else batch,
        "frames": len(latencies),
        "seconds": round(seconds, 3),
        "fps": round(len(latencies) / seconds, 2),
        "latency": latency_block(latencies, NO_FRAMES),
    }
