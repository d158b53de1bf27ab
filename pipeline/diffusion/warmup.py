"""Warm-up: compile every bucket and record its CUDA graphs at start, not on a user's
first frames; report each bucket's time through the progress callback; write the
compile cache afterwards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.diffusion.denoise_stage import STORED_MODES
from pipeline.messages import FrameIn

if TYPE_CHECKING:
    from pipeline.diffusion.backend import DiffusionBackend

log = logging.getLogger(__name__)

WARMUP_SESSION = "__warmup__"


class WarmupOutOfMemory(RuntimeError):
    pass


def warm_up(backend: DiffusionBackend, progress: Callable[[str], None]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (backend.size, backend.size, 3), dtype=np.uint8)
    cache = backend.compile_cache
    mega = "no disk cache" if cache.directory is None else ("cached" if cache.loaded else "first start, caching")
    backend.open_session(WARMUP_SESSION, "warm-up")
    t_start = time.monotonic()
    try:
        buckets = backend.buckets()
        n = 0
        while n < len(buckets):
            b = buckets[n]
            n += 1
            aot, doing, where = backend.denoise.aot, "compiling", mega
            if aot is not None:  # stored per bucket (and a stored mode can degrade to torch.compile)
                kind = aot.store.kind
                doing, where = (
                    ("loading", f"cached {kind}") if aot.store.cached(b) else (doing, f"first start, building a {kind}")
                )
            progress(f"batch bucket {b} ({n}/{len(buckets)}): {doing} (compile={backend.denoise.mode}, {where})")
            t0 = time.monotonic()
            frames = [FrameIn(WARMUP_SESSION, image, 0, Fraction(1, 90000), 0.0)] * b
            capture_side_graphs(backend, b, first=n == 1)
            if warm_bucket(backend, frames) and n > 1:
                n = 0  # a rebuilt graph: the buckets before warm up again with it
                continue
            progress(f"batch bucket {b} ({n}/{len(buckets)}) ready in {time.monotonic() - t0:.1f} s")
    finally:
        backend.close_session(WARMUP_SESSION)
    if backend.denoise.mode not in ("none", *STORED_MODES):  # their stores are the cache
        cache.save()
    progress(f"ready: {len(buckets)} buckets in {time.monotonic() - t_start:.1f} s")


def warm_bucket(backend: DiffusionBackend, frames: list[FrameIn]) -> bool:
    """Compile, then let cudagraph trees record; a graph that fails to build is rebuilt
    with fewer optimisations (denoise.degrade) instead of failing the start. True if it
    was rebuilt."""
    degraded = False
    while True:
        try:
            for _ in range(3 if backend.denoise.mode == "reduce-overhead" else 1):
                backend.collect(backend.submit(frames))
            return degraded
        except torch.cuda.OutOfMemoryError as exc:
            raise WarmupOutOfMemory(
                f"out of GPU memory while warming up batch bucket {len(frames)}: lower --max-batch "
                f"(now {backend.max_batch}) or --text-tokens, or free the GPU"
            ) from exc
        except Exception as exc:
            if not backend.denoise.degrade(exc):
                raise
            degraded = True
            if backend.cuda:
                torch.cuda.synchronize(backend.device)


def capture_side_graphs(backend: DiffusionBackend, bucket: int, first: bool) -> None:
    """CUDA-graph the side-stream stages for this bucket; on failure keep them eager
    (slower launches, same results) rather than refusing to start."""
    if not backend.cuda:
        return
    with backend.streams.on_side():
        example = torch.rand(bucket, 3, backend.size, backend.size, device=backend.device) * 255
        try:
            backend.reference_encoder.capture(example)
        except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason to fail
            log.warning("VAE-encoder CUDA graph for batch %d failed (%s); running it eagerly", bucket, exc)
        if first and not backend.planner.text_only:
            try:
                backend.text_stage.capture(example, backend.text.tokens("warm-up"))
            except Exception as exc:  # noqa: BLE001
                log.warning("text-encoder CUDA graphs failed (%s); running it eagerly", exc)
                backend.text_stage.use_graphs = False
                backend.text_stage.clear()
        torch.cuda.current_stream().synchronize()  # warm-up only: examples are freed next
