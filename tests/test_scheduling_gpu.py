"""Scheduling policies on the real diffusion engine (GPU only; the lead runs it on the
device): the same warmed engine serves 4, 8, 12 and 16 sessions at 30 fps under
--schedule pipelined (today's policy) and auto, full-size random weights from
../shared/reference. Prints the table; the asserts are sanity checks, not targets.

    pytest tests/test_scheduling_gpu.py -m gpu -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.clip_runs import load_frames
from bench.engine_scenarios import _live
from pipeline.client import EngineClient, EngineSpec
from pipeline.config import DiffusionConfig, EngineConfig
from pipeline.core import EngineCore
from pipeline.runtime import RuntimeConfig

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

pytestmark = [pytest.mark.diffusion, pytest.mark.gpu, pytest.mark.timeout(1200)]

SHARED = Path(__file__).resolve().parents[2] / "shared"
LOADS, SECONDS = (4, 8, 12, 16), 5.0
KEYS = ("p50_ms", "p95_ms", "delivered_fps_mean", "delivered_fps_min")


def test_auto_schedule_against_pipelined_on_the_diffusion_engine():
    from pipeline.diffusion.backend import DiffusionBackend
    from pipeline.diffusion.loading import load_components
    from pipeline.engines import diffusion_spec

    config = EngineConfig(
        kind="diffusion",
        model=f"random:{SHARED / 'reference'}",
        max_batch=16,
        device="cuda",
        diffusion=DiffusionConfig(buckets=(8, 16)),
    )
    device = torch.device("cuda")
    components = load_components(config.model, config.diffusion.revision, device, torch.bfloat16)
    info = diffusion_spec(config, device, "scheduling check").info
    backend = DiffusionBackend(components, info=info, config=config.diffusion, device=device)
    backend.warmup(lambda msg: print("warm-up:", msg, flush=True))
    frames = load_frames(SHARED / "data" / "davis", ["blackswan"], config.size)
    # Every client wraps the one warm backend in a fresh core (closing a core only drops sessions).
    spec = EngineSpec(info=info, build=lambda stats, progress: EngineCore(backend, stats))

    async def run(policy: str) -> list[dict]:
        client = EngineClient(spec, runtime=RuntimeConfig(schedule=policy))  # type: ignore[arg-type]
        client.start()
        await client.wait_ready(60)
        try:
            return [await _live(client, frames, n, SECONDS, "oil painting, vibrant colors") for n in LOADS]
        finally:
            await client.aclose()

    rows = {policy: asyncio.run(run(policy)) for policy in ("pipelined", "auto")}
    print(f"\n{torch.cuda.get_device_name()}, buckets {config.diffusion.buckets}, 30 fps per session")
    print(f"{'sessions':>8} | {'policy':>9} | {'p50 ms':>7} | {'p95 ms':>7} | {'fps mean':>8} | {'fps min':>7}")
    for i, n in enumerate(LOADS):
        for policy, results in rows.items():
            r = results[i]
            flat = {**r, **r["latency"]}
            cells = [f"{round(flat.get(k) or 0, 1):>{w}}" for k, w in zip(KEYS, (7, 7, 8, 7), strict=True)]
            print(f"{n:>8} | {policy:>9} | " + " | ".join(cells))
    print(json.dumps(rows))
    for i in range(len(LOADS)):
        auto, piped = rows["auto"][i], rows["pipelined"][i]
        assert auto["delivered_fps_mean"] >= 0.9 * piped["delivered_fps_mean"], (LOADS[i], auto, piped)
