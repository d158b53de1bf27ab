"""Benchmark-only controls of a built DiffusionBackend: compare modes on one compiled
engine instead of compiling one per mode, and check the compiled graph against eager."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.diffusion.backend import DiffusionBackend
from pipeline.messages import FrameIn


def set_overlap(backend: DiffusionBackend, on: bool) -> None:
    """Run every stage on the main stream in order (False) or overlapped (True)."""
    if backend.cuda:
        torch.cuda.synchronize(backend.device)  # nothing in flight may straddle the switch
    backend.streams.overlap = on


def reconfigure_text(backend: DiffusionBackend, **changes: Any) -> None:
    """Switch text-encoder scheduling at run time. Image-aware modes only: 'prompt'
    changes the token layout."""
    config = dataclasses.replace(backend.config, **changes)
    if (config.text_mode == "prompt") != backend.planner.text_only:
        raise ValueError("cannot switch between text-only and image-aware modes at run time")
    backend.config = backend.planner.config = config
    backend.mark_text_stale()


@torch.inference_mode()
def compiled_vs_eager(backend: DiffusionBackend, frames: Sequence[FrameIn]) -> dict[str, float] | None:
    """Run one batch through the compiled graph and the same module eagerly: how far apart
    are the uint8 frames? (None when nothing is compiled.)"""
    if backend.denoise.mode == "none":
        return None
    compiled = backend.collect(backend.submit(frames))
    with backend.denoise.eager_only():
        backend.mark_text_stale()  # same conditioning path for both runs
        reference = backend.collect(backend.submit(frames))
    diff = np.abs(np.stack(compiled).astype(np.int16) - np.stack(reference).astype(np.int16))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": round(float(diff.mean()), 4)}
