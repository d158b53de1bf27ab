"""The diffusion backend: DreamLite-mobile behind the EngineCore Backend interface.

Per step (a batch of frames, one per session, or B consecutive frames of one stream in
clip mode), padded to a fixed bucket (1, 2, 4, 8, 16) so shapes stay static:

  side stream:  pinned upload -> crop/resize on the GPU -> VAE encode of the reference
                (one CUDA graph) -> assemble the text conditioning of the batch
  text stream:  text encoder (one CUDA graph) for the sessions that need fresh
                conditioning: blocking for a new prompt, in the background for periodic
                refreshes (see conditioning.py)
  main stream:  waits on the side stream's event -> compiled UNet steps + Euler + decode
                (torch.compile, CUDA graphs) -> uint8 -> pinned download -> event

The backend is pipelined: submit() only launches; collect() waits on the batch's event.
While the GPU runs the main stream of batch n, the engine thread already launches the
side-stream work of batch n+1 (cross-stream ordering through events only, never a
device-wide synchronize). On CPU (tests) the same code runs eagerly on one stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import BATCH_BUCKETS, DiffusionConfig
from pipeline.core import AdapterUnavailable, PromptRejected
from pipeline.diffusion.adapter_stage import AdapterStage
from pipeline.diffusion.conditioning import Conditioning, TextStage
from pipeline.diffusion.lllite import AdapterBank, load_adapter
from pipeline.diffusion.loading import Components
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.stages import (
    DenoiseDecode,
    ReferenceEncoder,
    host_crop,
    square_frame,
)
from pipeline.diffusion.text import PromptTokens, TextConditioner
from pipeline.messages import EngineInfo, FrameIn

log = logging.getLogger(__name__)

# Host frames larger than this (bytes) skip the pinned staging buffer (rare: the signaling
# layer already scales camera frames to a 512 short side).
STAGING_BYTES = 1024 * 1024 * 3
RING = 3  # staging/output buffers in rotation: one filling, one in flight, one being read


class WarmupOutOfMemory(RuntimeError):
    pass


@dataclass(eq=False)  # identity semantics: sessions are compared and hashed as objects
class _Session:
    prompt: str
    tokens: PromptTokens
    noise: torch.Tensor
    """(1, 4, h, w) fixed noise in the model dtype."""
    current: Conditioning | None = None
    """The conditioning frames are made with."""
    pending: Conditioning | None = None
    """A background refresh, swapped in once its event has fired."""
    steps_since_text: int = 0
    text_stale: bool = True
    """True after a prompt change: the next frame must wait for fresh conditioning."""


class StageClock:
    """Optional per-stage timing (CUDA events on each stream; wall clock on CPU). Off by
    default: events on the hot path cost a little, and the benchmark turns it on."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.enabled = False
        self.samples: dict[str, list[float]] = {}

    def mark(self, marks: list[tuple[str, Any]] | None, name: str) -> None:
        """Record the end of stage `name` on the current stream."""
        if marks is None:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append((name, event))
        else:
            marks.append((name, time.perf_counter()))

    def new(self) -> list[tuple[str, Any]] | None:
        if not self.enabled:
            return None
        marks: list[tuple[str, Any]] = []
        self.mark(marks, "start")
        return marks

    def finish(self, *mark_lists: list[tuple[str, Any]] | None) -> None:
        """After the work is done: turn consecutive marks into stage durations (ms)."""
        for marks in mark_lists:
            if not marks:
                continue
            for (_, a), (name, b) in itertools.pairwise(marks):
                ms = a.elapsed_time(b) if self.cuda else (b - a) * 1000
                self.samples.setdefault(name, []).append(ms)


@dataclass
class _Ticket:
    rows: int
    out: torch.Tensor
    """Pinned (or CPU) uint8 (bucket, S, S, 3) the results land in."""
    done: torch.cuda.Event | None
    keep: list[torch.Tensor] = field(default_factory=list)
    """Device tensors that must outlive the launch (freed after collect)."""
    marks: tuple[list[tuple[str, Any]] | None, ...] = ()
    session_ids: list[str] = field(default_factory=list)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} frames exceed the largest batch bucket ({max(buckets)})")


class DiffusionBackend:
    def __init__(
        self,
        components: Components,
        *,
        info: EngineInfo,
        config: DiffusionConfig,
        device: torch.device,
    ) -> None:
        self.info = info
        self.config = config
        self.device = device
        self.cuda = device.type == "cuda"
        self.pipelined = self.cuda
        self.size = info.output_size
        self.max_batch = info.max_batch
        self._buckets = tuple(
            sorted(config.buckets) if config.buckets else (b for b in BATCH_BUCKETS if b <= info.max_batch)
        )
        c = components
        self._unet = c.unet
        self.vae = c.vae
        self.dtype = c.unet.dtype
        self.latent = self.size // (2 ** (len(c.vae.config.encoder_block_out_channels) - 1))
        schedule = FlowSchedule.from_scheduler(c.scheduler, config.steps, self.latent, self.latent)
        self.text = TextConditioner(
            c.text_encoder,
            c.tokenizer,
            image_size=config.text_image_size,
            text_tokens=config.text_tokens,
            device=device,
        )
        self.text_only = config.text_mode == "prompt"
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        # Graph capture is cheap (no compile): the text encoder gets every bucket size.
        text_buckets = [b for b in BATCH_BUCKETS if b <= max(self._buckets)]
        self.text_stage = TextStage(self.text, device, text_buckets, use_graphs=config.compile != "none")
        self.reference_encoder = ReferenceEncoder(c.vae, device, optimise=config.compile != "none")
        self.adapter: AdapterStage | None = None
        if config.lllite:
            # Installed before the graph is compiled: the adapter is part of the one UNet graph.
            loaded = load_adapter(Path(config.lllite), c.unet, config.lllite_blocks)
            bank = AdapterBank(c.unet, loaded, max(self._buckets), latent=self.latent)
            self.adapter = AdapterStage(
                bank,
                refresh=config.lllite_refresh,
                cut_threshold=config.scene_cut_threshold,
                strength=config.adapter_strength,
                size=self.size,
                device=device,
            )
            log.info(
                "temporal adapter: %d sites (%s), %d checkpoint keys not used",
                len(bank.sites),
                config.lllite_blocks,
                loaded.ignored_keys,
            )
        self._eager_denoise = DenoiseDecode(c.unet, c.vae, schedule, self.size)
        self.denoise: Callable[..., torch.Tensor] = self._eager_denoise
        self._compile_mode = self._pick_compile_mode(config.compile)
        # Static shapes, one graph per bucket: measured 30% faster than one batch-dynamic graph
        # (H100, B=8: 26.3 vs 34.0 ms), at ~1.5 minutes of warm-up per bucket.
        if self._compile_mode != "none":
            self.denoise = torch.compile(self._eager_denoise, mode=self._compile_mode, dynamic=False)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        self._sessions: dict[str, _Session] = {}
        self._prompt_cache: dict[str, Conditioning] = {}  # text-only mode: shared by sessions
        self._side = torch.cuda.Stream(device) if self.cuda else None
        self.overlap = True
        """Side/text streams on (the default). Off runs every stage on the main stream in
        order: same results; benchmarks use it to measure what the overlap buys. Set it
        with set_overlap()."""
        self._main = torch.cuda.current_stream(device) if self.cuda else None
        self._ring = 0
        pin = self.cuda
        self._staging = [
            torch.empty((self.max_batch, STAGING_BYTES), dtype=torch.uint8, pin_memory=pin) for _ in range(RING)
        ]
        self._staging_free: list[torch.cuda.Event | None] = [None] * RING
        self._outputs = [  # rows for the largest bucket: a batch is padded up to it
            torch.empty((max(self._buckets), self.size, self.size, 3), dtype=torch.uint8, pin_memory=pin)
            for _ in range(RING)
        ]
        self._noise_gen_seed = config.seed
        self.clock = StageClock(self.cuda)

    def _pick_compile_mode(self, mode: str) -> str:
        if mode == "auto":
            return "reduce-overhead" if self.cuda else "none"
        if mode != "none" and not self.cuda:
            log.warning("torch.compile mode %s needs CUDA here; running the UNet eagerly", mode)
            return "none"
        return mode

    # ---- sessions ---------------------------------------------------------------------------

    def check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.info.max_prompt_chars:
            raise PromptRejected(
                "prompt_too_long",
                f"prompt has {len(prompt)} characters; at most {self.info.max_prompt_chars} are allowed",
            )
        self.text.tokens(prompt, with_image=not self.text_only)

    def _noise(self) -> torch.Tensor:
        # Drawn on the CPU like diffusers' randn_tensor with a CPU generator, so a session
        # with seed s sees the noise of pipeline(..., generator=Generator().manual_seed(s)).
        gen = torch.Generator().manual_seed(self._noise_gen_seed)
        noise = torch.randn((1, 4, self.latent, self.latent), generator=gen, dtype=self.dtype)
        return noise.to(self.device)

    def open_session(self, session_id: str, prompt: str) -> None:
        tokens = self.text.tokens(prompt, with_image=not self.text_only)
        self._sessions[session_id] = _Session(prompt, tokens, self._noise())
        if self.adapter is not None:
            self.adapter.open(session_id)

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        if self.adapter is not None:
            self.adapter.close(session_id)

    def set_adapter_strength(self, session_id: str, value: float) -> None:
        if self.adapter is None:
            raise AdapterUnavailable("this engine runs without a temporal adapter (start it with --lllite PATH)")
        self.adapter.set_strength(session_id, value)

    def set_prompt(self, session_id: str, prompt: str) -> None:
        s = self._sessions[session_id]
        s.prompt = prompt
        s.tokens = self.text.tokens(prompt, with_image=not self.text_only)
        s.text_stale = True  # a new prompt refreshes the conditioning at the next step
        if self.adapter is not None:
            self.adapter.restart(session_id)

    # ---- steps ------------------------------------------------------------------------------

    def _side_stream(self) -> contextlib.AbstractContextManager[Any]:
        if self._side is None or not self.overlap:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._side)

    def _upload(self, frames: Sequence[FrameIn], slot: int, bucket: int) -> torch.Tensor:
        """Host frames -> (bucket, 3, S, S) float [0, 255] on the device (current stream),
        padded to the bucket by repeating the last frame."""
        staging = self._staging[slot]
        pending = self._staging_free[slot]
        if pending is not None:
            pending.synchronize()  # the DMA that last read this buffer must be done
        squares = []
        for i, frame in enumerate(frames):
            crop = host_crop(frame.image)
            n = crop.size
            if n <= STAGING_BYTES:
                np.copyto(staging[i, :n].numpy().reshape(crop.shape), crop)
                src = staging[i, :n].view(crop.shape)
            else:
                src = torch.from_numpy(np.ascontiguousarray(crop))
            squares.append(square_frame(src.to(self.device, non_blocking=True), self.size))
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
            self._staging_free[slot] = event
        squares += [squares[-1]] * (bucket - len(squares))
        return torch.stack(squares)

    @torch.inference_mode()
    def submit(self, frames: Sequence[FrameIn]) -> _Ticket:
        rows = len(frames)
        bucket = bucket_for(rows, self._buckets)
        slot = self._ring
        self._ring = (self._ring + 1) % RING
        sessions = [self._sessions[f.session_id] for f in frames]
        clock = self.clock
        todo = []
        if self.adapter is not None:
            firsts = {f.session_id: f.image for f in reversed(frames)}  # first frame of each session
            todo = self.adapter.plan(list(firsts.items()))
        with self._side_stream():
            side_marks = clock.new()
            pixels = self._upload(frames, slot, bucket)
            clock.mark(side_marks, "upload")
            if self.adapter is not None:
                self.adapter.embed(todo, self._main if self.overlap else None)
                clock.mark(side_marks, "adapter_conditioning")
            reference = self.reference_encoder(pixels)
            clock.mark(side_marks, "vae_encode")
            per_row = self._conditioning(sessions, pixels)
            clock.mark(side_marks, "text_encoder")
            per_row += [per_row[-1]] * (bucket - rows)
            self.text_stage.wait(per_row, self._side if self.overlap else self._main)
            cond = torch.stack([c.cond for c in per_row])
            cond_mask = torch.stack([c.mask for c in per_row])
            noise = torch.cat([s.noise for s in sessions] + [sessions[-1].noise] * (bucket - rows))
            ready = torch.cuda.Event() if self.cuda else None
            if ready is not None:
                ready.record()
        keep = [reference, noise, cond, cond_mask]
        if self._main is not None and ready is not None:
            self._main.wait_event(ready)
            for t in keep:
                t.record_stream(self._main)
        main_marks = clock.new()
        if self.adapter is not None:
            self.adapter.write([f.session_id for f in frames])  # main stream: ordered after the last read
        if self._compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        images = self.denoise(noise, reference, cond, cond_mask)
        clock.mark(main_marks, "unet_decode")
        out = self._outputs[slot]
        out[:bucket].copy_(images, non_blocking=True)
        clock.mark(main_marks, "download")
        done = None
        if self.cuda:
            done = torch.cuda.Event()
            done.record()
        for s in {id(x): x for x in sessions}.values():
            s.steps_since_text += 1
        return _Ticket(
            rows=rows,
            out=out,
            done=done,
            keep=keep,
            marks=(side_marks, main_marks),
            session_ids=[f.session_id for f in frames],
        )

    def collect(self, ticket: _Ticket) -> list[np.ndarray]:
        if ticket.done is not None:
            ticket.done.synchronize()
        self.clock.finish(*ticket.marks)
        # Copy out of the ring buffer: it is reused RING launches later.
        images = [ticket.out[i].numpy().copy() for i in range(ticket.rows)]
        if self.adapter is not None:
            for sid, image in zip(ticket.session_ids, images, strict=True):
                self.adapter.record_output(sid, image)
        return images

    def _conditioning(self, sessions: list[_Session], pixels: torch.Tensor) -> list[Conditioning]:
        """The text conditioning of every row, launching the text encoder where needed:
        one row per session (its first frame in the batch is the representative frame),
        or every frame in clip mode with representative_frame off and mode 'every'."""
        after = None
        if self.cuda:
            after = torch.cuda.Event()
            after.record()  # pixels are ready on the side stream
        if self.text_only:
            return [self._prompt_only(s) for s in sessions]
        mode = self.config.text_mode
        unique = list({id(s): s for s in sessions}.values())
        for s in unique:  # finished background refreshes take over now
            if s.pending is not None and s.pending.is_ready():
                s.current, s.pending = s.pending, None
        if mode == "every" and not self.config.representative_frame and len(unique) < len(sessions):
            results = self.text_stage.encode(pixels[: len(sessions)], [s.tokens for s in sessions], after)
            for s, c in zip(sessions, results, strict=True):
                s.current, s.text_stale, s.steps_since_text = c, False, 0
            return results
        first_row = {}
        for i, s in enumerate(sessions):
            first_row.setdefault(id(s), i)
        blocking = [s for s in unique if s.current is None or s.text_stale or mode == "every"]
        background = [
            s
            for s in unique
            if not (s.current is None or s.text_stale or mode == "every")
            and mode == "refresh"
            and s.pending is None
            and s.steps_since_text >= self.config.text_refresh
        ]
        for group, wait in ((blocking, True), (background, False)):
            if not group:
                continue
            index = torch.tensor([first_row[id(s)] for s in group], device=self.device)
            results = self.text_stage.encode(pixels.index_select(0, index), [s.tokens for s in group], after)
            for s, c in zip(group, results, strict=True):
                if wait:
                    s.current, s.pending, s.text_stale = c, None, False
                else:
                    s.pending = c
                s.steps_since_text = 0
        return [s.current for s in sessions]  # type: ignore[misc]

    def _prompt_only(self, s: _Session) -> Conditioning:
        cached = self._prompt_cache.get(s.prompt)
        if cached is None:
            cached = self.text_stage.encode(None, [s.tokens], None)[0]
            if len(self._prompt_cache) >= 256:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[s.prompt] = cached
        s.current, s.text_stale = cached, False
        return cached

    # ---- introspection (benchmarks, /healthz) ------------------------------------------------

    def set_overlap(self, on: bool) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # nothing in flight may straddle the switch
        self.overlap = on
        self.text_stage.overlap = on

    def reconfigure_text(self, **changes: Any) -> None:
        """Switch text-encoder scheduling at run time (benchmarks compare modes on one
        compiled engine). Image-aware modes only: 'prompt' changes the token layout."""
        config = dataclasses.replace(self.config, **changes)
        if (config.text_mode == "prompt") != self.text_only:
            raise ValueError("cannot switch between text-only and image-aware modes at run time")
        self.config = config
        for s in self._sessions.values():
            s.text_stale = True

    def device_info(self) -> dict[str, Any]:
        return {
            **describe_device(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "compile": self._compile_mode,
        }

    @torch.inference_mode()
    def compiled_vs_eager(self, frames: Sequence[FrameIn]) -> dict[str, float] | None:
        """Run one batch through the compiled graph and the same module eagerly: how far
        apart are the uint8 frames? (None when nothing is compiled.)"""
        if self._compile_mode == "none":
            return None
        eager = self._eager_denoise
        compiled = self.collect(self.submit(frames))
        self.denoise, saved = eager, self.denoise
        mode, self._compile_mode = self._compile_mode, "none"
        try:
            for s in self._sessions.values():
                s.text_stale = True  # same conditioning path for both runs
            reference = self.collect(self.submit(frames))
        finally:
            self.denoise, self._compile_mode = saved, mode
        diff = np.abs(np.stack(compiled).astype(np.int16) - np.stack(reference).astype(np.int16))
        return {"max_abs_diff": float(diff.max()), "mean_abs_diff": round(float(diff.mean()), 4)}

    def peak_memory_mb(self, reset: bool = False) -> float | None:
        if not self.cuda:
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)
        return round(peak, 1)

    # ---- warm-up ----------------------------------------------------------------------------

    def buckets(self) -> list[int]:
        return list(self._buckets)

    def bucket_for(self, rows: int) -> int:
        return bucket_for(rows, self._buckets)

    def warmup(self, progress: Callable[[str], None]) -> None:
        """Run every bucket a few times: compiles the graph and records the CUDA graphs now,
        not on a user's first frames."""
        from fractions import Fraction

        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (self.size, self.size, 3), dtype=np.uint8)
        sid = "__warmup__"
        self.open_session(sid, "warm-up")
        try:
            buckets = self.buckets()
            for n, b in enumerate(buckets, 1):
                progress(f"batch bucket {b} ({n}/{len(buckets)}), compile={self._compile_mode}")
                frames = [FrameIn(sid, image, 0, Fraction(1, 90000), 0.0)] * b
                self._capture_side_graphs(b, first=n == 1)
                try:
                    for _ in range(3 if self._compile_mode == "reduce-overhead" else 1):
                        self.collect(self.submit(frames))  # compile, then cudagraph trees record
                except torch.cuda.OutOfMemoryError as exc:
                    raise WarmupOutOfMemory(
                        f"out of GPU memory while warming up batch bucket {b}: lower --max-batch "
                        f"(now {self.max_batch}) or --text-tokens, or free the GPU"
                    ) from exc
        finally:
            self.close_session(sid)
        progress("ready")

    def _capture_side_graphs(self, bucket: int, first: bool) -> None:
        """CUDA-graph the side-stream stages for this bucket; on failure keep them eager
        (slower launches, same results) rather than refusing to start."""
        if not self.cuda:
            return
        example = torch.rand(bucket, 3, self.size, self.size, device=self.device) * 255
        try:
            self.reference_encoder.capture(example)
        except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason to fail
            log.warning("VAE-encoder CUDA graph for batch %d failed (%s); running it eagerly", bucket, exc)
        if first and not self.text_only:
            try:
                self.text_stage.capture(example, self.text.tokens("warm-up"))
            except Exception as exc:  # noqa: BLE001
                log.warning("text-encoder CUDA graphs failed (%s); running it eagerly", exc)
                self.text_stage.use_graphs = False

    def close(self) -> None:
        if self.adapter is not None:
            self.adapter.close_all()
            self.adapter.bank.remove(self._unet)  # the UNet is shared with whoever built it
        self._sessions.clear()
        self._prompt_cache.clear()


def describe_device(device: torch.device) -> dict[str, Any]:
    """GPU, driver and library versions, for benchmark results."""
    import subprocess

    import diffusers
    import transformers

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            sm_count=props.multi_processor_count,
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            info["driver"] = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info
