"""The scenarios that run the diffusion engine in this process: offline clips (the core
stepped on this thread, B consecutive frames of one stream per step, as fast as it takes
them) and real-time sessions (through EngineClient and its engine thread, each fed at
30 fps). Timing is engine-internal: frame handed to the engine (host preparation included)
-> stylized uint8 frame on the host, ready for the encoder."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import numpy as np

from bench.adapter_scenarios import AdapterScenarios
from bench.baselines import run_naive
from bench.clip_runs import NO_FRAMES, TB, load_frames, run_clip, text_settings
from bench.harness import MAIN_ENGINE_SCENARIOS, BenchConfig
from bench.provenance import jsonable
from bench.run import BUDGET, ResultsFile, RunClock
from bench.stats import latency_block
from pipeline.client import EngineClient, EngineSpec
from pipeline.config import DiffusionConfig, EngineConfig
from pipeline.core import EngineCore
from pipeline.diffusion import tuning
from pipeline.messages import AddSession, FrameIn, RemoveSession
from pipeline.stats import EngineStats

SETTLE_S = 1.0
MAX_EVENTS = 64
COMPONENTS_SCOPE = (
    "side stream: upload, vae_encode, text_encoder (= enqueue/wait on the side stream; the encoder itself runs "
    "on the text stream: text_stream_ms_per_launch); main stream: unet_decode (UNet steps + Euler + VAE decode, "
    "one compiled graph), download. Streams overlap, so stage times include contention; the serial scenario "
    "runs the same work on one stream"
)


async def _live(client: EngineClient, frames: list[np.ndarray], n: int, seconds: float, prompt: str) -> dict:
    fps = 30.0
    sessions = [client.open_session(f"live{n}-{i}", prompt) for i in range(n)]
    start = time.monotonic() + 0.1
    window = (start + SETTLE_S, start + SETTLE_S + seconds)
    latencies: list[list[float]] = [[] for _ in range(n)]

    async def produce(i: int) -> None:
        k = 0
        phase = i / (n * fps)  # cameras are not in lockstep
        while (due := start + phase + k / fps) <= window[1]:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sessions[i].submit(frames[(k * 7 + i * 31) % len(frames)], k * 3000, TB)
            k += 1

    async def consume(i: int) -> None:
        while True:
            out = await sessions[i].recv()
            if window[0] <= out.t_in <= window[1]:
                latencies[i].append((time.monotonic() - out.t_in) * 1000)

    consumers = [asyncio.create_task(consume(i)) for i in range(n)]
    await asyncio.gather(*(produce(i) for i in range(n)))
    await asyncio.sleep(0.5)  # let the last frames come out
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    for s in sessions:
        s.close()
    per_fps = [len(v) / seconds for v in latencies]
    return {
        "sessions": n,
        "delivered_fps_min": round(min(per_fps), 2),
        "delivered_fps_mean": round(statistics.mean(per_fps), 2),
        "dropped_in": sum(s.dropped_in for s in sessions),
        "latency": latency_block([v for item in latencies for v in item], NO_FRAMES),
    }


def run_live(core: EngineCore, info: Any, frames: list[np.ndarray], config: BenchConfig) -> list[dict]:
    """N sessions at 30 fps each for every N, through the engine thread (which closes the core)."""

    async def main() -> list[dict]:
        client = EngineClient(EngineSpec(info=info, build=lambda stats, *_: core))
        client.start()
        await client.wait_ready(600)
        try:
            return [await _live(client, frames, n, config.live_seconds, config.prompt) for n in config.sessions]
        finally:
            await client.aclose()

    return asyncio.run(main())


def stage_means(backend: Any) -> dict[str, float]:
    means = {k: round(statistics.mean(v), 3) for k, v in backend.clock.samples.items() if v}
    backend.clock.samples.clear()
    return means


def components_record(backend: Any, row: dict[str, Any]) -> dict[str, Any]:
    backend.text_stage.drain_timings()
    text_ms = backend.text_stage.timings_ms
    backend.text_stage.timings_ms = None
    backend.clock.enabled = False
    record: dict[str, Any] = {
        "B": 8,
        "mode": "paper (text encoder on every frame)",
        "stage_ms_mean": stage_means(backend),
        "scope": COMPONENTS_SCOPE,
    }
    if text_ms:  # CUDA events on the text stream; omitted on a CPU (one stream, no events)
        record["text_stream_ms_per_launch"] = round(statistics.mean(text_ms), 3)
    if "peak_memory_mb" in row:
        record["peak_memory_mb"] = row["peak_memory_mb"]
    return record


class EngineScenarios:
    """Runs the selected in-process scenarios in order, saving after each."""

    def __init__(self, config: BenchConfig, device: Any, out: ResultsFile, clock: RunClock) -> None:
        self.config = config
        self.device = device
        self.out = out
        self.clock = clock

    def wanted(self, scenario: str, step: str | None = None) -> bool:
        if scenario not in self.config.scenarios:
            return False
        if self.clock.begin(step or scenario):
            return True
        self.out.skip(step or scenario, BUDGET)
        return False

    def build(self, name: str, engine: EngineConfig, components: Any) -> tuple[EngineCore, Any]:
        """A backend on the shared components, warmed up (compiled) and recorded."""
        from pipeline.diffusion.backend import DiffusionBackend
        from pipeline.engines import diffusion_spec

        self.out.engines[name] = jsonable(engine)
        spec = diffusion_spec(engine, self.device, "benchmark")
        backend = DiffusionBackend(components, info=spec.info, config=engine.diffusion, device=self.device)
        core = EngineCore(backend, EngineStats())
        t0 = time.monotonic()
        events: list[dict[str, Any]] = []

        def progress(message: str) -> None:
            if len(events) < MAX_EVENTS:
                events.append({"t_s": round(time.monotonic() - t0, 2), "message": message[:200]})
            self.clock(f"warm-up {name}: {message}")

        core.warmup(progress)
        seconds = time.monotonic() - t0
        self.clock(f"warm-up {name} took {seconds:.0f} s")
        info = backend.device_info()
        record = {"seconds": round(seconds, 2), "buckets": backend.buckets(), "events": events}
        record |= {"compile": info["compile"], "dtype": info["dtype"]}
        self.out.scenarios.setdefault("engine_warmup", {})[name] = record
        self.out.save()
        return core, backend

    def run(self) -> None:
        import torch

        from pipeline.diffusion.loading import load_components

        c = self.config
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        frames = load_frames(c.davis_dir, c.clips, c.size)
        self.clock.begin("load", required=True)
        components = load_components(c.model, DiffusionConfig().revision, self.device, dtype)
        main = c.engine_config()
        # Before any engine swaps in its sync-free text-encoder paths: diffusers' own code.
        for name, matched in (("naive", None), ("naive_matched", main.diffusion)):
            if self.wanted(name):
                point = (matched.text_image_size, matched.text_tokens) if matched else None
                self.out.scenarios[name] = run_naive(components, frames[: c.naive_frames], c.prompt, c.size, point)
                self.out.save()
        if set(c.scenarios) & set(MAIN_ENGINE_SCENARIOS):
            self.main_engine(main, components, frames)
        AdapterScenarios(self).run(components, frames)

    def main_engine(self, main: EngineConfig, components: Any, frames: list[np.ndarray]) -> None:
        c = self.config
        self.clock.begin("warmup", required=True)
        core, backend = self.build("main", main, components)
        check_frames = [FrameIn("check", frames[i * 5], i, TB, time.monotonic()) for i in range(4)]
        core.execute(AddSession("check", c.prompt))
        diff = tuning.compiled_vs_eager(backend, check_frames)
        core.execute(RemoveSession("check"))
        if diff is not None:  # omitted when nothing is compiled (CPU)
            self.out.scenarios["compiled_vs_eager"] = diff
        self.offline(core, backend, frames)
        if self.wanted("sessions"):
            tuning.reconfigure_text(
                backend, text_mode=c.live_text_mode, text_refresh=c.live_text_refresh, representative_frame=True
            )
            text = text_settings(backend)
            rows = run_live(core, backend.info, frames, c)
            section = {"text": text, "fed_fps": 30.0, "seconds": c.live_seconds, "settle_s": SETTLE_S, "rows": rows}
            self.out.scenarios["sessions"] = section
            self.out.save()
        core.close()

    def clip_section(self, name: str, backend: Any, **text: Any) -> dict:
        tuning.reconfigure_text(backend, **text)
        return self.out.scenarios.setdefault(name, {"text": text_settings(backend), "rows": []})

    def offline(self, core: EngineCore, backend: Any, frames: list[np.ndarray]) -> None:
        c = self.config
        batches = list(c.batches) if "paper" in c.scenarios else []
        if "components" in c.scenarios and 8 not in batches:
            batches.append(8)  # the component breakdown is taken at B=8
        for b in batches:
            if not self.wanted("paper" if "paper" in c.scenarios else "components", f"paper:{b}"):
                continue
            section = self.clip_section("paper", backend, text_mode="every", representative_frame=False)
            breakdown = "components" in c.scenarios and b == 8
            backend.clock.enabled = breakdown
            backend.text_stage.timings_ms = [] if breakdown else None
            backend.peak_memory_mb(reset=True)
            row = run_clip(core, frames, b, c.frames, c.prompt)
            if (peak := backend.peak_memory_mb()) is not None:
                row["peak_memory_mb"] = peak
            section["rows"].append(row)
            if breakdown:
                self.out.scenarios["components"] = components_record(backend, row)
            self.out.save()
        if self.wanted("cached_prompt"):
            text = {"text_mode": "refresh", "text_refresh": 16, "representative_frame": True}
            section = self.clip_section("cached_prompt", backend, **text)
            backend.clock.enabled = "components" in self.out.scenarios
            section["rows"].append(run_clip(core, frames, 8, c.frames, c.prompt))
            if backend.clock.enabled:
                self.out.scenarios["components"]["cached_prompt_stage_ms_mean"] = stage_means(backend)
            backend.clock.enabled = False
            self.out.save()
        if self.wanted("serial"):  # the same B=8 runs with every stage on one stream: what the overlap buys
            tuning.set_overlap(backend, False)
            serial: dict[str, Any] = {}
            for name, text in (
                ("paper", {"text_mode": "every", "representative_frame": False}),
                ("cached_prompt", {"text_mode": "refresh", "text_refresh": 16, "representative_frame": True}),
            ):
                tuning.reconfigure_text(backend, **text)
                row = run_clip(core, frames, 8, c.frames, c.prompt)
                serial[name] = {"text": text_settings(backend), "rows": [row]}
            tuning.set_overlap(backend, True)
            self.out.scenarios["serial"] = serial
            self.out.save()
