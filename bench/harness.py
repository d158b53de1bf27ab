"""`livestyle bench`: measure the real engine end to end and write a JSON result.

Timing is end to end inside the server process: from the moment a frame is handed to the
engine (host preparation included) until its stylized frame is ready for the encoder.
Frames are real DAVIS-2017 clips. Scenarios:

  naive          diffusers' DreamLiteMobilePipeline per frame (the baseline)
  paper          one stream, B consecutive frames per step, text encoder on every frame
  cached_prompt  as paper, text encoder refreshed every 16 steps on one frame
  components     per-stage GPU time from CUDA events on each stream, peak memory
  serial         paper and cached_prompt at B=8 with every stage on one stream (what the
                 side-stream overlap buys)
  interactive    one session fed at 30 fps in real time through the engine client
  sessions       N sessions at 30 fps each, batched across sessions
  adapter        cached_prompt at B=8 with the temporal LLLite adapter on the 38 down-block
                 sites / on all 108, conditioning refreshed every N = 1, 4, 8, 16 steps (a
                 checkpoint with the published layout and random weights); "off" is the
                 cached_prompt scenario
  webrtc         a real server process and N aiortc client processes sending a DAVIS clip
                 at 30 fps over loopback, VP8 and H264: delivered fps, latency by pts, and
                 the server's CPU use (bench/webrtc_load.py)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bench.loopback import ping_pong, read_clip
from pipeline.client import EngineClient, EngineSpec
from pipeline.config import DiffusionConfig, EngineConfig
from pipeline.core import EngineCore
from pipeline.messages import AddSession, FrameIn, RemoveSession
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)

SCENARIOS = (
    "naive",
    "paper",
    "cached_prompt",
    "components",
    "serial",
    "interactive",
    "sessions",
    "adapter",
    "webrtc",
)
TB = Fraction(1, 90_000)

TARGETS = {
    "paper_b8_fps": (">=", 200.0),
    "cached_prompt_b8_fps": (">=", 300.0),
    "speedup_vs_naive": (">=", 25.0),
    "interactive_p50_ms": ("<=", 40.0),
    "interactive_p99_ms": ("<=", 80.0),
    "max_sessions_at_30fps": (">=", 8),
    "many_sessions_p50_ms": ("<=", 100.0),
}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    """Model to load: 'random:DIR' (full-size random weights), 'tiny', an HF id or a directory."""
    davis_dir: Path
    """Folder of the DAVIS clips used as camera input."""
    out_dir: Path = Path("bench/results")
    """Where the JSON result goes (file name carries the date and the GPU)."""
    scenarios: tuple[str, ...] = SCENARIOS
    """Which scenarios to run."""
    frames: int = 480
    """Frames per offline (paper / cached_prompt) measurement."""
    batches: tuple[int, ...] = (1, 4, 8, 16)
    """B values for the paper scenario."""
    sessions: tuple[int, ...] = (1, 2, 4, 8, 16)
    """N values for the many-sessions scenario."""
    live_seconds: float = 6.0
    """Measured seconds per real-time scenario (after one second of settling)."""
    naive_frames: int = 24
    """Frames through the naive pipeline."""
    clips: tuple[str, ...] = ("blackswan", "bmx-trees", "dance-twirl", "goat")
    """DAVIS clips (ping-pong looped, concatenated) fed as camera frames."""
    prompt: str = "oil painting, vibrant colors"
    """Style prompt."""
    live_text_mode: str = "refresh"
    """Text-encoder mode of the real-time scenarios (the server default)."""
    live_text_refresh: int = 8
    """Refresh period of the real-time scenarios."""
    device: str = "auto"
    """Torch device."""
    compile: str = "auto"
    """torch.compile mode."""
    size: int = 512
    """Frame side."""
    buckets: tuple[int, ...] | None = None
    """Batch buckets compiled at warm-up (None = all up to the largest needed)."""
    tag: str = ""
    """Extra text for the result file name."""
    webrtc_clients: tuple[int, ...] = (1, 2, 4, 8)
    """Client counts of the webrtc scenario."""
    webrtc_codecs: tuple[str, ...] = ("VP8", "H264")
    """Codecs the webrtc clients prefer, one run each."""
    webrtc_seconds: float = 8.0
    """Measured seconds per webrtc run."""
    webrtc_engine: str = "diffusion"
    """Engine of the webrtc server: 'diffusion' (this run's model) or 'preview'."""


@dataclass
class Latencies:
    values_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        if not self.values_ms:
            return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
        p50, p95, p99 = np.percentile(self.values_ms, [50, 95, 99])
        return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}


def load_frames(davis_dir: Path, clips: Sequence[str], size: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for name in clips:
        frames += ping_pong(read_clip(davis_dir / f"{name}.mp4"))  # no cut inside a clip
    if not frames or frames[0].shape[:2] != (size, size):
        raise ValueError(f"expected {size}x{size} frames in {davis_dir}")
    return frames


# ---- offline scenarios (core stepped on this thread) -----------------------------------------


def run_clip(core: EngineCore, frames: list[np.ndarray], batch: int, count: int, prompt: str) -> dict[str, Any]:
    """One stream, `batch` consecutive frames per step, as fast as the engine takes them."""
    sid = f"clip{batch}"
    core.execute(AddSession(sid, prompt))
    lat = Latencies()
    done = 0
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
    while done < count:
        result = core.step(feed(), one_per_session=False)
        for out in result.outputs:
            lat.values_ms.append((out.t_out - out.t_in) * 1000)
        done += len(result.outputs)
    for out in core.flush().outputs:
        lat.values_ms.append((out.t_out - out.t_in) * 1000)
        done += 1
    seconds = time.monotonic() - t0
    core.execute(RemoveSession(sid))
    return {
        "B": batch,
        "bucket": core.backend.bucket_for(batch) if hasattr(core.backend, "bucket_for") else batch,
        "frames": done,
        "seconds": round(seconds, 3),
        "fps": round(done / seconds, 1),
        **lat.summary(),
    }


# ---- real-time scenarios (through EngineClient and its engine thread) -----------------------


async def _live(
    client: EngineClient, frames: list[np.ndarray], n: int, seconds: float, prompt: str, fps: float = 30.0
) -> dict[str, Any]:
    sessions = [client.open_session(f"live{n}-{i}", prompt) for i in range(n)]
    settle = 1.0
    start = time.monotonic() + 0.1
    window = (start + settle, start + settle + seconds)
    received = [0] * n
    lat = [Latencies() for _ in range(n)]

    async def produce(i: int) -> None:
        k = 0
        phase = i / (n * fps)  # cameras are not in lockstep
        while True:
            due = start + phase + k / fps
            if due > window[1]:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sessions[i].submit(frames[(k * 7 + i * 31) % len(frames)], k * 3000, TB)
            k += 1

    async def consume(i: int) -> None:
        while True:
            out = await sessions[i].recv()
            now = time.monotonic()
            if window[0] <= out.t_in <= window[1]:
                received[i] += 1
                lat[i].values_ms.append((now - out.t_in) * 1000)

    consumers = [asyncio.create_task(consume(i)) for i in range(n)]
    await asyncio.gather(*(produce(i) for i in range(n)))
    await asyncio.sleep(0.5)  # let the last frames come out
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    for s in sessions:
        s.close()
    per_fps = [r / seconds for r in received]
    all_lat = Latencies([v for item in lat for v in item.values_ms])
    return {
        "sessions": n,
        "seconds": seconds,
        "fed_fps": fps,
        "delivered_fps_min": round(min(per_fps), 1),
        "delivered_fps_mean": round(statistics.mean(per_fps), 1),
        "dropped_in": sum(s.dropped_in for s in sessions),
        **all_lat.summary(),
    }


def run_live(spec: EngineSpec, frames: list[np.ndarray], config: BenchConfig, counts: Sequence[int]) -> list[dict]:
    async def main() -> list[dict]:
        client = EngineClient(spec)
        client.start()
        await client.wait_ready(600)
        try:
            return [await _live(client, frames, n, config.live_seconds, config.prompt) for n in counts]
        finally:
            await client.aclose()

    return asyncio.run(main())


# ---- the run -------------------------------------------------------------------------------------


def _summary(results: dict[str, Any], device: dict[str, Any]) -> dict[str, Any]:
    sc = results
    paper = {r["B"]: r for r in sc.get("paper", [])}
    cached = {r["B"]: r for r in sc.get("cached_prompt", [])}
    naive = sc.get("naive", {})
    summary: dict[str, Any] = {
        "gpu": device.get("gpu") or "cpu",
        "paper_b8_fps": paper.get(8, {}).get("fps"),
        "cached_prompt_b8_fps": cached.get(8, {}).get("fps"),
        "naive_fps": round(naive["fps"], 2) if naive else None,
    }
    best = summary["paper_b8_fps"]
    summary["speedup_vs_naive"] = round(best / naive["fps"], 1) if best and naive else None
    inter = sc.get("interactive", {})
    summary["interactive_p50_ms"] = inter.get("p50_ms")
    summary["interactive_p99_ms"] = inter.get("p99_ms")
    live = sc.get("sessions", [])
    holding = [r for r in live if r["delivered_fps_min"] >= 28.5]
    summary["max_sessions_at_30fps"] = max((r["sessions"] for r in holding), default=0) if live else None
    top = max(holding, key=lambda r: r["sessions"], default=None)
    summary["many_sessions_p50_ms"] = top["p50_ms"] if top else None
    return summary


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, (op, goal) in TARGETS.items():
        value = summary.get(key)
        if value is None:
            rows.append({"metric": key, "target": f"{op} {goal}", "value": None, "met": None})
            continue
        met = value >= goal if op == ">=" else value <= goal
        gap = (goal - value) if op == ">=" else (value - goal)
        rows.append(
            {
                "metric": key,
                "target": f"{op} {goal}",
                "value": value,
                "met": met,
                "shortfall": None if met else round(gap, 2),
                "shortfall_pct": None if met or not goal else round(100 * gap / goal, 1),
            }
        )
    return rows


def plan(config: BenchConfig, buckets: Sequence[int]) -> list[tuple[str, float]]:
    """The run's steps in order, as (message prefix, estimated seconds on an H100)."""
    steps: list[tuple[str, float]] = []
    local = [s for s in config.scenarios if s != "webrtc"]
    if local:
        steps.append(("loading", 15.0))
        if "naive" in config.scenarios:
            steps.append(("naive", 3 + 0.2 * config.naive_frames))
        steps += [(f"warm-up: batch bucket {b} ", 90.0) for b in buckets]
        batches = list(config.batches) if "paper" in config.scenarios else []
        if "components" in config.scenarios and 8 not in batches:
            batches.append(8)
        steps += [(f"paper: B={b},", config.frames / (70.0 if b == 1 else 145.0) + 2) for b in batches]
        if "cached_prompt" in config.scenarios:
            steps.append(("cached_prompt", config.frames / 260.0 + 2))
        if "serial" in config.scenarios:
            steps += [("serial: paper", config.frames / 140.0 + 2), ("serial: cached", config.frames / 255.0 + 2)]
        counts = (["interactive"] if "interactive" in config.scenarios else []) + (
            list(config.sessions) if "sessions" in config.scenarios else []
        )
        if counts:
            steps.append(("real-time", 5 + len(counts) * (config.live_seconds + 1.6)))
        if "adapter" in config.scenarios:
            for blocks in ("down_blocks", "all"):
                steps.append((f"adapter {blocks}: compiling", 90.0))
                steps += [(f"adapter {blocks}, refresh", config.frames / 240.0 + 2)] * 4
    if "webrtc" in config.scenarios:
        steps.append(("webrtc: server up", 120.0))
        runs = len(config.webrtc_clients) * len(config.webrtc_codecs)
        steps += [("webrtc: ", config.webrtc_seconds + 3)] * runs
    return steps


class EtaProgress:
    """Prefixes progress lines with [step k/n], elapsed time and an ETA: the remaining
    steps' estimates, scaled by how this machine has done against the estimates so far."""

    def __init__(self, steps: list[tuple[str, float]], out: Callable[[str], None]) -> None:
        self.steps = steps
        self.out = out
        self.index = -1
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        nxt = self.index + 1
        if nxt < len(self.steps) and message.startswith(self.steps[nxt][0]):
            self.index = nxt
        elapsed = time.monotonic() - self.t0
        done = sum(est for _, est in self.steps[: max(self.index, 0)])
        rest = sum(est for _, est in self.steps[max(self.index, 0) :])
        speed = elapsed / done if done > 0 else 1.0
        self.out(f"[{max(self.index, 0) + 1}/{len(self.steps)} | {elapsed:.0f} s | ETA {rest * speed:.0f} s] {message}")


def run_bench(config: BenchConfig, progress: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    from pipeline.diffusion.backend import describe_device
    from pipeline.engines import torch_device

    t_start = time.monotonic()
    engine_config = EngineConfig(
        kind="diffusion",
        model=config.model,
        max_batch=_max_batch(config),
        device=config.device,
        size=config.size,
        diffusion=DiffusionConfig(
            compile=config.compile, text_mode="every", representative_frame=False, buckets=config.buckets
        ),
    )
    device, why_not = torch_device(engine_config)
    if device is None:
        raise RuntimeError(f"cannot run the diffusion engine: {why_not}")
    device_info = describe_device(device)
    buckets = engine_config.diffusion.buckets or [b for b in (1, 2, 4, 8, 16) if b <= engine_config.max_batch]
    progress = EtaProgress(plan(config, buckets), progress)
    out_path = _result_path(config, device_info)
    results: dict[str, Any] = {}
    timing = {"warmup_s": 0.0}

    def save() -> dict[str, Any]:  # after every scenario: a run cut short still leaves its numbers
        return _write(out_path, results, device_info, config, engine_config, timing["warmup_s"], t_start)

    if any(s != "webrtc" for s in config.scenarios):
        device_info.update(_run_in_process(config, engine_config, device, results, timing, save, progress))
    if "webrtc" in config.scenarios:
        from bench.webrtc_load import run_webrtc

        if config.webrtc_engine == "diffusion":
            serve = [
                "--engine",
                "diffusion",
                "--model",
                config.model,
                "--device",
                config.device,
                "--max-batch",
                "8",
                "--buckets",
                "8",
                "--compile",
                config.compile,
            ]
        else:
            serve = ["--engine", "preview"]
        clip = config.davis_dir / f"{config.clips[0]}.mp4"
        results["webrtc"] = run_webrtc(
            serve,
            clip,
            config.webrtc_clients,
            config.webrtc_codecs,
            config.webrtc_seconds,
            config.out_dir / "webrtc-server.log",
            progress,
        )
    return save(), out_path


def _run_in_process(
    config: BenchConfig,
    engine_config: EngineConfig,
    device: Any,
    results: dict[str, Any],
    timing: dict[str, float],
    save: Callable[[], Any],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every scenario that runs the engine in this process; returns engine details."""
    import torch

    from pipeline.diffusion.backend import DiffusionBackend
    from pipeline.diffusion.loading import load_components
    from pipeline.diffusion.naive import measure_naive
    from pipeline.engines import diffusion_spec

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames = load_frames(config.davis_dir, config.clips, config.size)
    progress(f"loading {config.model} on {device} ({len(frames)} camera frames)")
    components = load_components(config.model, engine_config.diffusion.revision, device, dtype)

    if "naive" in config.scenarios:  # before the engine swaps in its sync-free text-encoder paths
        progress(f"naive pipeline: {config.naive_frames} frames")
        results["naive"] = measure_naive(components, frames[: config.naive_frames], config.prompt, config.size)

    spec = diffusion_spec(engine_config, device, "benchmark")
    backend = DiffusionBackend(components, info=spec.info, config=engine_config.diffusion, device=device)
    core = EngineCore(backend, EngineStats())
    t_warm = time.monotonic()
    core.warmup(lambda msg: progress(f"warm-up: {msg}"))
    timing["warmup_s"] = time.monotonic() - t_warm
    progress(f"warm-up took {timing['warmup_s']:.0f} s")
    check_sid = "check"
    core.execute(AddSession(check_sid, config.prompt))
    check_frames = [FrameIn(check_sid, frames[i * 5], i, TB, time.monotonic()) for i in range(4)]
    results["compiled_vs_eager"] = backend.compiled_vs_eager(check_frames)
    core.execute(RemoveSession(check_sid))
    progress(f"compiled vs eager (uint8): {results['compiled_vs_eager']}")
    if "paper" in config.scenarios or "components" in config.scenarios:
        backend.reconfigure_text(text_mode="every", representative_frame=False)
        results["paper"] = []
        batches = list(config.batches) if "paper" in config.scenarios else []
        if "components" in config.scenarios and 8 not in batches:
            batches.append(8)  # the component breakdown is taken at B=8
        for b in batches:
            progress(f"paper: B={b}, {config.frames} frames, text encoder on every frame")
            backend.clock.enabled = "components" in config.scenarios and b == 8
            backend.text_stage.timings_ms = [] if backend.clock.enabled else None
            backend.peak_memory_mb(reset=True)
            row = run_clip(core, frames, b, config.frames, config.prompt)
            row["peak_memory_mb"] = backend.peak_memory_mb()
            results["paper"].append(row)
            if backend.clock.enabled:
                backend.text_stage.drain_timings()
                text_ms = backend.text_stage.timings_ms or [0.0]
                backend.text_stage.timings_ms = None
                results["components"] = {
                    "B": 8,
                    "mode": "paper (text encoder on every frame)",
                    "stage_ms_mean": {k: round(statistics.mean(v), 3) for k, v in backend.clock.samples.items()},
                    "text_stream_ms_per_launch": round(statistics.mean(text_ms), 3),
                    "note": "side stream: upload, vae_encode, text_encoder (= enqueue/wait on the side stream; "
                    "the encoder itself runs on the text stream: text_stream_ms_per_launch); main stream: "
                    "unet_decode (UNet steps + Euler + VAE decode, one compiled graph), download. Streams "
                    "overlap, so stage times include contention; the *_serial scenarios run the same work "
                    "on one stream",
                    "peak_memory_mb": row["peak_memory_mb"],
                }
                backend.clock.samples.clear()
                backend.clock.enabled = False
            save()

    if "cached_prompt" in config.scenarios:
        backend.reconfigure_text(text_mode="refresh", text_refresh=16, representative_frame=True)
        progress(f"cached_prompt: B=8, {config.frames} frames, text encoder every 16 steps on one frame")
        backend.clock.enabled = "components" in config.scenarios
        results["cached_prompt"] = [run_clip(core, frames, 8, config.frames, config.prompt)]
        if backend.clock.enabled and "components" in results:
            results["components"]["cached_prompt_stage_ms_mean"] = {
                k: round(statistics.mean(v), 3) for k, v in backend.clock.samples.items()
            }
        backend.clock.samples.clear()
        backend.clock.enabled = False
        save()

    if "serial" in config.scenarios:
        # The same B=8 runs with every stage on one stream: what the stream overlap buys.
        backend.set_overlap(False)
        backend.reconfigure_text(text_mode="every", representative_frame=False)
        progress("serial: paper B=8 on one stream")
        results["paper_serial"] = [run_clip(core, frames, 8, config.frames, config.prompt)]
        backend.reconfigure_text(text_mode="refresh", text_refresh=16, representative_frame=True)
        progress("serial: cached_prompt B=8 on one stream")
        results["cached_prompt_serial"] = [run_clip(core, frames, 8, config.frames, config.prompt)]
        backend.set_overlap(True)
        save()

    live_counts: list[int] = []
    if "interactive" in config.scenarios:
        live_counts.append(1)
    if "sessions" in config.scenarios:
        live_counts += list(config.sessions)
    if live_counts:
        backend.reconfigure_text(
            text_mode=config.live_text_mode, text_refresh=config.live_text_refresh, representative_frame=True
        )
        progress(f"real-time: sessions {live_counts} at 30 fps, {config.live_seconds:.0f} s each")
        live_spec = EngineSpec(info=spec.info, build=lambda stats, progress: core)
        rows = run_live(live_spec, frames, config, live_counts)
        if "interactive" in config.scenarios:
            results["interactive"] = {**rows.pop(0), "text_mode": f"{config.live_text_mode}/{config.live_text_refresh}"}
        if "sessions" in config.scenarios:
            results["sessions"] = rows
        save()

    engine = {"dtype": str(dtype).removeprefix("torch."), "compile": backend.device_info()["compile"]}
    core.close()
    if "adapter" in config.scenarios:
        results["adapter"] = run_adapter_costs(components, frames, config, engine_config, device, progress)
        save()
    return engine


def run_adapter_costs(
    components: Any,
    frames: list[np.ndarray],
    config: BenchConfig,
    engine_config: EngineConfig,
    device: Any,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """cached_prompt B=8 per adapter variant (each its own compiled graph); compare with the
    cached_prompt scenario of the same run for the adapter off."""
    import tempfile

    from pipeline.diffusion.backend import DiffusionBackend
    from pipeline.diffusion.lllite import synthesize_checkpoint
    from pipeline.engines import diffusion_spec

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "lllite_v3_random.safetensors"
        synthesize_checkpoint(components.unet, checkpoint)
        for blocks in ("down_blocks", "all"):
            diffusion = DiffusionConfig(
                compile=config.compile,
                text_mode="refresh",
                text_refresh=16,
                representative_frame=True,
                buckets=(8,),
                lllite=str(checkpoint),
                lllite_blocks=blocks,
            )
            variant = EngineConfig(
                kind="diffusion", model=config.model, max_batch=8, device=config.device, diffusion=diffusion
            )
            spec = diffusion_spec(variant, device, "benchmark")
            backend = DiffusionBackend(components, info=spec.info, config=diffusion, device=device)
            core = EngineCore(backend, EngineStats())
            progress(f"adapter {blocks}: compiling B=8")
            core.warmup(lambda msg: None)
            assert backend.adapter is not None
            for refresh in (1, 4, 8, 16):
                backend.adapter.refresh = refresh
                backend.adapter.counts.clear()
                progress(f"adapter {blocks}, refresh every {refresh}: cached_prompt B=8, {config.frames} frames")
                row = run_clip(core, frames, 8, config.frames, config.prompt)
                rows.append(
                    {
                        "adapter": blocks,
                        "sites": len(backend.adapter.bank.sites),
                        "refresh": refresh,
                        "refreshes_done": dict(backend.adapter.counts),
                        **row,
                    }
                )
            core.close()
    return rows


def _result_path(config: BenchConfig, device_info: dict[str, Any]) -> Path:
    gpu = (device_info.get("gpu") or "cpu").replace(" ", "-").replace("/", "-")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return config.out_dir / f"{stamp}-{gpu}{('-' + config.tag) if config.tag else ''}.json"


def _write(
    path: Path,
    results: dict[str, Any],
    device_info: dict[str, Any],
    config: BenchConfig,
    engine_config: EngineConfig,
    warmup_s: float,
    t_start: float,
) -> dict[str, Any]:
    summary = _summary(results, device_info)
    report = {
        "summary": summary,
        "targets": _targets(summary),
        "scenarios": results,
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "device": device_info,
            "python": platform.python_version(),
            "warmup_seconds": round(warmup_s, 1),
            "total_seconds": round(time.monotonic() - t_start, 1),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "engine": asdict(engine_config.diffusion),
            "timing": "end to end in the engine process: frame handed to the engine (host prep included) "
            "-> stylized uint8 frame on the host, ready for the encoder",
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _max_batch(config: BenchConfig) -> int:
    """The largest bucket any chosen scenario needs (warm-up compiles every bucket up to it)."""
    need = [1]
    if "paper" in config.scenarios:
        need += list(config.batches)
    if {"cached_prompt", "components"} & set(config.scenarios):
        need.append(8)
    if "sessions" in config.scenarios:
        need += list(config.sessions)
    top = max(need)
    if config.buckets:
        return min(max(config.buckets), next(b for b in (1, 2, 4, 8, 16) if b >= top))
    return next(b for b in (1, 2, 4, 8, 16) if b >= top)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"GPU: {report['summary']['gpu']}"]
    for row in report["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        extra = f" (short by {row['shortfall']}, {row['shortfall_pct']}%)" if row.get("shortfall") else ""
        lines.append(f"  {row['metric']:<24} {row['value']!s:>10}  target {row['target']:<8} {mark}{extra}")
    sc = report["scenarios"]
    for r in sc.get("paper", []):
        lines.append(f"  paper B={r['B']:<2} {r['fps']:>8} fps  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms")
    for r in sc.get("sessions", []):
        lines.append(
            f"  sessions N={r['sessions']:<2} min {r['delivered_fps_min']:>5} fps/session  "
            f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
        )
    comp = sc.get("components")
    if comp:
        lines.append(f"  stages (B=8, ms): {comp['stage_ms_mean']}")
    return "\n".join(lines)
