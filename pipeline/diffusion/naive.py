"""The naive baseline: diffusers' DreamLiteMobilePipeline called once per frame (one step,
512x512, PIL in, numpy out), exactly as a user of the library would write it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DreamLiteMobilePipeline
from PIL import Image

from pipeline.diffusion.loading import Components


def naive_pipeline(components: Components) -> DreamLiteMobilePipeline:
    c = components
    pipe = DreamLiteMobilePipeline(
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        processor=c.processor,
        vae=c.vae,
        unet=c.unet,
        scheduler=c.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_naive(
    components: Components, frames: Sequence[np.ndarray], prompt: str, size: int = 512, warmup: int = 2
) -> dict[str, float]:
    """Per-frame pipeline calls; returns fps and per-frame latency percentiles (ms)."""
    pipe = naive_pipeline(components)
    gen = torch.Generator().manual_seed(0)

    def one(frame: np.ndarray) -> np.ndarray:
        out = pipe(
            prompt=prompt,
            image=Image.fromarray(frame),
            height=size,
            width=size,
            num_inference_steps=1,
            generator=gen,
            output_type="np",
        ).images
        return out[0]

    for frame in frames[:warmup]:
        one(frame)
    times = []
    t_start = time.perf_counter()
    for frame in frames:
        t0 = time.perf_counter()
        one(frame)  # output_type="np" copies to the host: the frame is really done
        times.append((time.perf_counter() - t0) * 1000)
    seconds = time.perf_counter() - t_start
    p50, p95 = np.percentile(times, [50, 95])
    return {"frames": len(frames), "fps": len(frames) / seconds, "p50_ms": float(p50), "p95_ms": float(p95)}
