"""Stress check of the cross-stream handoffs (issue #15 part 5).

N sessions, each sending frames of one distinct flat colour with its own prompt, in
background-refresh mode (text encoder every step, never waited for) at full load: every
step carries all sessions in a rotating row order, every third step one fewer (another
bucket). Every conditioning the text stream produced is then compared with an eager
recompute of its own session's colour and prompt on an idle GPU: if a text launch read
another step's pixels (the "inputs ready" event recorded before the gather was queued,
or the gathered rows freed while the text stream still read them), it matches another
session's colour instead, and the check fails.

    python -m bench.stream_check [--model random:../shared/reference] [--legacy-order]
                                 [--race-window-cycles 2000000]

--legacy-order restores the pre-fix order; on a GPU the check is expected to FAIL with
it. On an H200 the natural race window was too short to show it (0 of 175 rows wrong,
bench/results/gpu-check/): the legacy order builds its row index with a blocking
host->device copy, so the host waits for the side stream there and the gather kernel
then runs for microseconds before the text launch is queued. --race-window-cycles makes
the side stream idle that many GPU cycles just before each gather kernel, after that host
wait (about 1 ms per 2,000,000 on an H200), so a text launch the legacy order lets start
early reads rows not gathered yet; the fixed order must still pass with the same window.
On CPU (the CI test) there is one stream, so it passes trivially but runs the same logic.
The text encoder sees 512x512 frames here (diffusers' own setting): it is then the
slowest stage, so its launches lag behind the side stream, as they do in production
when many sessions refresh at once.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import DiffusionConfig
from pipeline.diffusion.backend import DiffusionBackend
from pipeline.diffusion.loading import load_components
from pipeline.diffusion.warmup import capture_side_graphs
from pipeline.messages import EngineInfo, FrameIn

MARGIN = 2.0
"""A refresh must be this many times closer to the recompute of its own session's colour
than to the recompute of any other colour with the same prompt (that isolates what the
pixels did: bf16 graphs at batch B differ from an eager batch-1 run a little, a frame
read from another step differs by a whole colour)."""
REL_TOLERANCE = 0.25
"""...and within this of it (relative max error): catches garbage from freed memory."""


def stress_config(**overrides: Any) -> DiffusionConfig:
    settings: dict[str, Any] = {
        "text_mode": "refresh",
        "text_refresh": 1,
        "text_image_size": 512,
        "text_tokens": 400,
        "compile": "reduce-overhead",  # text and VAE-encoder graphs on; the UNet runs eagerly below
        "compile_cache_dir": None,
        **overrides,
    }
    return DiffusionConfig(**settings)


def colours(n: int, size: int) -> list[np.ndarray]:
    out = []
    for k in range(n):
        r, g, b = colorsys.hsv_to_rgb(k / n, 0.8, 0.5 + 0.4 * (k % 2))
        out.append(np.full((size, size, 3), (int(r * 255), int(g * 255), int(b * 255)), dtype=np.uint8))
    return out


def run_stream_check(
    backend: DiffusionBackend, sessions: int, steps: int, legacy_order: bool, race_window_cycles: int = 0
) -> dict[str, Any]:
    """Drive the backend as the engine does (one step in flight) and verify every text
    result. The UNet runs eagerly (the check is about the side and text streams)."""
    backend.planner.legacy_order = legacy_order
    backend.planner.race_window_cycles = race_window_cycles
    images = colours(sessions, backend.size)
    ids = [f"s{k}" for k in range(sessions)]
    prompts = {f"style number {k}": k for k in range(sessions)}
    for sid, prompt in zip(ids, prompts, strict=True):
        backend.open_session(sid, prompt)
    stage = backend.text_stage
    records: list[tuple[list[str], list[Any]]] = []
    encode = stage.encode

    def recording(frames: Any, tokens: Any, after: Any) -> Any:
        results = encode(frames, tokens, after)
        records.append(([t.prompt for t in tokens], results))
        return results

    stage.encode = recording  # type: ignore[method-assign]
    t0 = time.monotonic()
    try:
        with backend.denoise.eager_only():
            for n, b in enumerate(backend.buckets(), 1):
                capture_side_graphs(backend, b, first=n == 1)
            inflight = None
            for step in range(steps):
                order = [(step + k) % sessions for k in range(sessions)]
                if step % 3 == 2 and sessions > 1:
                    order = order[:-1]
                frames = [FrameIn(ids[k], images[k], step, Fraction(1, 90000), time.monotonic()) for k in order]
                ticket = backend.submit(frames)
                if inflight is not None:
                    backend.collect(inflight)
                inflight = ticket
            if inflight is not None:
                backend.collect(inflight)
    finally:
        stage.encode = encode  # type: ignore[method-assign]
        backend.planner.legacy_order = False
        backend.planner.race_window_cycles = 0
        for sid in ids:
            backend.close_session(sid)
    if backend.cuda:
        torch.cuda.synchronize(backend.device)
    seconds = time.monotonic() - t0
    return {
        **verify(backend, records, images, prompts),
        "steps": steps,
        "sessions": sessions,
        "legacy_order": legacy_order,
        "race_window_cycles": race_window_cycles,
        "seconds": round(seconds, 2),
    }


@torch.inference_mode()
def verify(backend: DiffusionBackend, records: list, images: list[np.ndarray], prompts: dict[str, int]) -> dict:
    """refs[k][j]: session k's prompt on colour j (eager, batch of all colours, idle GPU)."""
    text = backend.text
    frames = torch.from_numpy(np.stack(images)).to(backend.device).permute(0, 3, 1, 2).float()
    refs: list[tuple[int, torch.Tensor]] = []
    for prompt in prompts:
        tokens = text.tokens(prompt)
        ids, _ = text.host_inputs([tokens] * len(images))
        refs.append((tokens.length - 64, text.forward(frames, ids).float()))
    rows = mismatched = 0
    worst_err, min_margin = 0.0, float("inf")
    for names, results in records:
        for prompt, result in zip(names, results, strict=True):
            k = prompts[prompt]
            valid, per_colour = refs[k]
            got = result.cond[:valid].float()
            scale = float(per_colour[k, :valid].abs().max()) or 1.0
            errs = [float((got - per_colour[j, :valid]).abs().max()) / scale for j in range(len(images))]
            err = errs[k]
            others = [e for j, e in enumerate(errs) if j != k]
            margin = min(others) / max(err, 1e-12) if others else float("inf")
            rows += 1
            worst_err, min_margin = max(worst_err, err), min(min_margin, margin)
            if err > REL_TOLERANCE or margin < MARGIN:
                mismatched += 1
    return {
        "passed": rows > 0 and mismatched == 0,
        "encodes": len(records),
        "rows_checked": rows,
        "mismatched_rows": mismatched,
        "worst_rel_err": round(worst_err, 5),
        "min_margin": round(min_margin, 2) if rows else None,
    }


def build_backend(model: str, device: torch.device, sessions: int, **overrides: Any) -> DiffusionBackend:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    components = load_components(model, None, device, dtype)
    max_batch = next(b for b in (1, 2, 4, 8, 16) if b >= sessions)
    info = EngineInfo("diffusion", model, "stream check", 512, max_batch, 500)
    return DiffusionBackend(components, info=info, config=stress_config(**overrides), device=device)


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(prog="python -m bench.stream_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=f"random:{repo.parent / 'shared' / 'reference'}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--legacy-order", action="store_true", help="the pre-fix stream order (expected to FAIL on a GPU)")
    p.add_argument(
        "--race-window-cycles",
        type=int,
        default=0,
        help="GPU cycles the side stream idles before each gather, widening the legacy race (default: 0)",
    )
    args = p.parse_args(argv)
    if args.race_window_cycles < 0:
        p.error(f"--race-window-cycles must be >= 0, got {args.race_window_cycles}")
    backend = build_backend(args.model, torch.device(args.device), args.sessions)
    try:
        result = run_stream_check(backend, args.sessions, args.steps, args.legacy_order, args.race_window_cycles)
    finally:
        backend.close()
    print(json.dumps(result))
    print("PASS" if result["passed"] else "FAIL", "stream_check", "(legacy order)" if args.legacy_order else "")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
