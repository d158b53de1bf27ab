"""`livestyle bench`: measure the engine and the server, and write a results file.

Scenarios (frames are real DAVIS-2017 clips; scopes as docs/performance.md names them):

  naive          diffusers' DreamLiteMobilePipeline per frame at its own settings
  naive_matched  the same at the engine's operating point (text image size, token length)
  paper          one stream, B consecutive frames per step, text encoder on every frame
  cached_prompt  B=8, text encoder refreshed every 16 steps on one frame
  components     per-stage GPU time from CUDA events on each stream (paper, B=8), peak memory
  serial         paper and cached_prompt at B=8 with every stage on one stream
  sessions       N sessions at 30 fps each through the engine thread (N=1: interactive)
  paper_point    the paper's configuration: B=8, text encoder every batch on one frame,
                 LLLite on the 38 down-block sites refreshed every 8 steps (random v3 weights)
  adapter        cached_prompt B=8 with the adapter per refresh period (the adapter graph of
                 paper_point; --adapter-blocks all adds the 108-site layout)
  warmup         a real `livestyle serve` process: first start, then a second start of the
                 same configuration in a new process (time to /healthz ok)
  webrtc         N aiortc client processes against that server over loopback, VP8 and H264:
                 end-to-end latency by pts, delivered fps, the engine's own latency, server CPU

The in-process scenarios run first (one process, one compile per bucket); warmup/webrtc use
server processes. Each run writes one file, rewritten after every scenario.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.provenance import jsonable
from bench.run import ResultsFile, RunClock, Step
from pipeline.config import BATCH_BUCKETS, DiffusionConfig, EngineConfig

ENGINE_SCENARIOS = (
    "naive",
    "naive_matched",
    "paper",
    "cached_prompt",
    "components",
    "serial",
    "sessions",
    "paper_point",
    "adapter",
)
MAIN_ENGINE_SCENARIOS = ("paper", "cached_prompt", "components", "serial", "sessions")
"""The ones that need the engine with the compiled main buckets."""
SERVE_SCENARIOS = ("warmup", "webrtc")
SCENARIOS = ENGINE_SCENARIOS + SERVE_SCENARIOS
COMPILE_S = 95.0  # one batch bucket on a cold cache, H100/H200
RUN_OVERHEAD_S = 8.0  # per webrtc run: client start-up, connect, anchor, settle, drain


@dataclass(frozen=True)
class BenchConfig:
    model: str
    """Model to load: 'random:DIR' (full-size random weights), 'tiny', an HF id or a directory."""
    davis_dir: Path
    """Folder of the DAVIS clips used as camera input."""
    out_dir: Path = Path("bench/results")
    """Where the results file goes (its name carries the date, the GPU and the tag)."""
    scenarios: tuple[str, ...] = ENGINE_SCENARIOS
    """Which scenarios to run."""
    command: tuple[str, ...] = ()
    """The command line that started this run (recorded in the results file)."""
    frames: int = 256
    """Frames per offline (clip) measurement."""
    batches: tuple[int, ...] = (1, 8, 16)
    """B values for the paper scenario."""
    sessions: tuple[int, ...] = (1, 4, 8, 12, 16)
    """N values for the sessions scenario."""
    live_seconds: float = 4.0
    """Measured seconds per sessions row (after one second of settling)."""
    naive_frames: int = 12
    """Frames through diffusers' pipeline, per naive scenario."""
    clips: tuple[str, ...] = ("blackswan", "bmx-trees", "dance-twirl", "goat")
    """DAVIS clips (ping-pong looped, concatenated) fed as camera frames."""
    prompt: str = "oil painting, vibrant colors"
    """Style prompt."""
    live_text_mode: str = "refresh"
    """Text-encoder mode of the sessions scenario (the server default)."""
    live_text_refresh: int = 8
    """Refresh period of the sessions scenario."""
    device: str = "auto"
    """Torch device."""
    compile: str = "auto"
    """torch.compile mode."""
    size: int = 512
    """Frame side of the in-process scenarios (clips are resized if they differ)."""
    buckets: tuple[int, ...] | None = None
    """Batch buckets the in-process engine compiles (None = every bucket up to the largest
    needed, as a server has: the sessions rows with fewer buckets pad more and measure a
    layout no server runs)."""
    tag: str = ""
    """Extra text for the results file name."""
    budget_s: float | None = None
    """Seconds the whole run may take: a step whose estimate (scaled by this machine's pace
    so far) would overrun it is skipped and recorded as such. None = no limit."""
    adapter_blocks: tuple[str, ...] = ("down_blocks",)
    """Adapter layouts of the adapter scenario (each compiles its own bucket-8 graph)."""
    adapter_refresh: tuple[int, ...] = (1, 4, 8, 16)
    """Refresh periods of the adapter scenario."""
    webrtc_clients: tuple[int, ...] = (1, 4, 8, 16)
    """Client counts of the webrtc scenario."""
    webrtc_codecs: tuple[str, ...] = ("VP8", "H264")
    """Codecs the webrtc clients prefer, one run each."""
    webrtc_seconds: float = 8.0
    """Measured seconds per webrtc run."""
    webrtc_engine: str = "diffusion"
    """Engine of the server processes: 'diffusion' (this run's model) or 'preview'."""
    serve_buckets: tuple[int, ...] = BATCH_BUCKETS
    """Buckets of the server processes (warmup, webrtc)."""
    serve_args: tuple[str, ...] = ()
    """Extra options for every server process (e.g. its compile-cache flag)."""
    media_processes: int = 0
    """Media processes of the webrtc scenario: 0 = the clients connect to the server that
    runs the engine; N = N more `livestyle serve --engine-socket` processes take the clients
    (round robin), each with its own GIL and event loop, and feed that server's engine
    (--engine-host)."""
    switches: tuple[tuple[str, Any], ...] = ()
    """Speed switches given on the command line, as (DiffusionConfig field, value): set on
    the in-process engines (main and adapter) and passed to every server process."""
    serve_timeout_s: float = 600.0
    """How long a server process may take to say ok on /healthz."""
    log_level: str = "info"
    """Logging level of the bench command."""

    def max_batch(self) -> int:
        """The largest bucket any chosen in-process scenario needs."""
        need = [1, *(self.batches if "paper" in self.scenarios else ())]
        if {"cached_prompt", "components", "serial"} & set(self.scenarios):
            need.append(8)
        if "sessions" in self.scenarios:
            need += list(self.sessions)
        top = next(b for b in BATCH_BUCKETS if b >= max(need))
        return min(max(self.buckets), top) if self.buckets else top

    def diffusion_config(self, **settings: Any) -> DiffusionConfig:
        """An in-process engine's settings: this run's compile mode and speed switches."""
        return DiffusionConfig(compile=self.compile, **dict(self.switches), **settings)

    def engine_config(self) -> EngineConfig:
        """The in-process engine (text settings are switched per scenario at run time)."""
        diffusion = self.diffusion_config(text_mode="every", representative_frame=False, buckets=self.buckets)
        return EngineConfig(
            kind="diffusion",
            model=self.model,
            max_batch=self.max_batch(),
            device=self.device,
            size=self.size,
            diffusion=diffusion,
        )


def plan(config: BenchConfig) -> list[Step]:
    """The run's steps in order, with estimates for an H100/H200 (compiles on a cold cache)."""
    c, chosen, frames = config, set(config.scenarios), config.frames
    steps: list[Step] = []

    def add(scenario: str | None, key: str, label: str, seconds: float) -> None:
        if scenario is None or scenario in chosen:
            steps.append(Step(key, label, seconds))

    if chosen & set(ENGINE_SCENARIOS):
        add(None, "load", f"load {c.model} and the clips", 20)
        for name in ("naive", "naive_matched"):
            add(name, name, f"{name}: diffusers' pipeline, {c.naive_frames} frames", 8)
        buckets = c.engine_config().diffusion.buckets or [b for b in BATCH_BUCKETS if b <= c.max_batch()]
        if chosen & set(MAIN_ENGINE_SCENARIOS):
            label = f"compile the engine: buckets {','.join(map(str, buckets))}"
            add(None, "warmup", label, COMPILE_S * len(buckets) + 5)
        batches = list(c.batches) if "paper" in chosen else []
        batches += [8] if "components" in chosen and 8 not in batches else []
        for b in batches:
            add(None, f"paper:{b}", f"paper B={b}, {frames} frames", frames / (70 if b == 1 else 150) + 3)
        add("cached_prompt", "cached_prompt", f"cached_prompt B=8, {frames} frames", frames / 260 + 3)
        add("serial", "serial", "serial: paper and cached_prompt B=8 on one stream", frames / 90 + 6)
        live = len(c.sessions) * (c.live_seconds + 2.5) + 5
        add("sessions", "sessions", f"sessions {','.join(map(str, c.sessions))} at 30 fps", live)
        for blocks in adapter_layouts(c):
            add(None, f"lllite:{blocks}", f"compile the adapter engine ({blocks}, bucket 8)", COMPILE_S + 5)
            if blocks == "down_blocks":
                add("paper_point", "paper_point", f"paper_point B=8, {frames} frames", frames / 200 + 3)
            if blocks in c.adapter_blocks:
                sweep = len(c.adapter_refresh) * (frames / 240 + 3)
                add("adapter", f"adapter:{blocks}", f"adapter {blocks}: refresh {c.adapter_refresh}", sweep)
    if chosen & set(SERVE_SCENARIOS):
        n = len(c.serve_buckets)
        add(None, "serve:first", f"start livestyle serve ({n} buckets)", 20 + 35 * n)
        add("warmup", "serve:second", f"second start of the same server ({n} buckets)", 20 + 15 * n)
        runs = len(c.webrtc_clients) * len(c.webrtc_codecs)
        per_run = c.webrtc_seconds + RUN_OVERHEAD_S
        add("webrtc", "webrtc", f"webrtc: {runs} runs of {c.webrtc_seconds:.0f} s", runs * per_run)
    return steps


def unused_path(path: Path) -> Path:
    """path, or path with -2, -3, ... before .json when a run of the same day and tag already
    wrote it (a later run must not replace an earlier one's evidence)."""
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def adapter_layouts(config: BenchConfig) -> list[str]:
    """The adapter graphs to compile: down_blocks for paper_point, then the adapter sweep's."""
    layouts = ["down_blocks"] if "paper_point" in config.scenarios else []
    if "adapter" in config.scenarios:
        layouts += [b for b in config.adapter_blocks if b not in layouts]
    return layouts


def run_bench(config: BenchConfig, progress: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    from bench.engine_scenarios import EngineScenarios
    from bench.serve_scenarios import ServeScenarios
    from pipeline.diffusion.backend import describe_device
    from pipeline.engines import torch_device

    device, why_not = torch_device(config.engine_config())
    if device is None:
        raise RuntimeError(f"cannot run the diffusion engine: {why_not}")
    device_info = describe_device(device)
    clock = RunClock(plan(config), config.budget_s, progress)
    clock.print_plan()
    gpu = (device_info.get("gpu") or "cpu").replace(" ", "-").replace("/", "-")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    path = unused_path(config.out_dir / f"{stamp}-{gpu}{('-' + config.tag) if config.tag else ''}.json")
    out = ResultsFile(path, {"argv": list(config.command), "config": jsonable(config)}, device_info)
    out.save()
    if set(config.scenarios) & set(ENGINE_SCENARIOS):
        EngineScenarios(config, device, out, clock).run()
    if set(config.scenarios) & set(SERVE_SCENARIOS):
        ServeScenarios(config, out, clock).run()
    return out.save(), path


def format_table(report: dict[str, Any]) -> str:
    """The summary and the targets, for the terminal."""
    lines = [f"GPU: {report['summary']['gpu']}"]
    for row in report["targets"]:
        mark = {True: "met", False: "MISSED", None: "reported"}[row.get("met")]
        goal = f"{row['op']} {row['goal']:g}" if "goal" in row else ""
        extra = f" (short by {row['shortfall']:g}, {row['shortfall_pct']:g} %)" if "shortfall" in row else ""
        lines.append(f"  {row['metric']:<26} {row['value']!s:>10}  {goal:<9} {mark}{extra}")
    for item in report["skipped"]:
        lines.append(f"  skipped {item['scenario']}: {item['reason']}")
    return "\n".join(lines)
