"""The diffusion backend: DreamLite-mobile behind the EngineCore Backend interface.

Per step (a batch of frames, one per session, or B consecutive frames of one stream in
clip mode), padded to a fixed bucket (1, 2, 4, 8, 16) so shapes stay static:

  side stream:  pinned upload -> crop/resize on the GPU (upload.py) -> VAE encode of
                the reference (one CUDA graph) -> the text conditioning of the batch
                (text_plan.py) -> stacked UNet inputs -> event
  text stream:  text encoder (one CUDA graph per batch and length bucket) for the
                sessions that need fresh conditioning: blocking for a new prompt, in the
                background for periodic refreshes (conditioning.py)
  main stream:  waits on the side stream's event -> compiled UNet steps + Euler + decode
                (denoise_stage.py) -> uint8 -> pinned download -> event (collect waits)

The backend is pipelined: submit() only launches; collect() waits on the batch's event.
While the GPU runs the main stream of batch n, the engine thread already launches the
side-stream work of batch n+1. Cross-stream ordering and lifetimes: streams.py. On CPU
(tests) the same code runs eagerly on one stream.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config import BATCH_BUCKETS, DiffusionConfig
from pipeline.core import AdapterUnavailable, PromptRejected
from pipeline.diffusion.adapter_stage import AdapterStage
from pipeline.diffusion.clock import Marks, StageClock
from pipeline.diffusion.compile_cache import CompileCache, engine_cache_parts
from pipeline.diffusion.conditioning import TextStage
from pipeline.diffusion.denoise_stage import STORED_MODES, DenoiseStage
from pipeline.diffusion.device import describe_device, peak_memory_mb
from pipeline.diffusion.loading import Components
from pipeline.diffusion.precompile import PrecompileStore
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.stages import ReferenceEncoder
from pipeline.diffusion.streams import KeepAlive, StreamSet
from pipeline.diffusion.text import TextConditioner
from pipeline.diffusion.text_plan import DiffusionSession, TextPlanner, advance_blends, blended, start_blend
from pipeline.diffusion.upload import RING, FrameUploader
from pipeline.diffusion.warmup import WarmupOutOfMemory, warm_up
from pipeline.messages import EngineInfo, FrameIn

log = logging.getLogger(__name__)

__all__ = ["DiffusionBackend", "WarmupOutOfMemory", "bucket_for", "describe_device"]


@dataclass
class _Ticket:
    rows: int
    out: torch.Tensor
    """Pinned (or CPU) uint8 (bucket, S, S, 3) the results land in."""
    done: torch.cuda.Event | None
    keep: list[torch.Tensor] = field(default_factory=list)
    """Side-stream tensors the main stream reads: held until `done` (collect)."""
    marks: tuple[Marks, ...] = ()
    session_ids: list[str] = field(default_factory=list)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} frames exceed the largest batch bucket ({max(buckets)})")


class DiffusionBackend:
    def __init__(
        self, components: Components, *, info: EngineInfo, config: DiffusionConfig, device: torch.device
    ) -> None:
        self.info, self.config, self.device = info, config, device
        self.cuda = self.pipelined = device.type == "cuda"
        self.size, self.max_batch = info.output_size, info.max_batch
        self._buckets = tuple(
            sorted(config.buckets) if config.buckets else (b for b in BATCH_BUCKETS if b <= info.max_batch)
        )
        c = components
        parts = engine_cache_parts(config, device, c, self._buckets, self.size)
        # On the CPU only the stored modes compile (the others run eagerly there).
        compiles = config.compile != "none" and (self.cuda or config.compile in STORED_MODES)
        self.compile_cache = CompileCache(config.compile_cache_dir if compiles else None, parts)
        self.compile_cache.prepare(mega=config.compile not in STORED_MODES)  # before any torch.compile call
        self._unet, self.dtype = c.unet, c.unet.dtype
        self.latent = self.size // (2 ** (len(c.vae.config.encoder_block_out_channels) - 1))
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        self.streams = StreamSet(device, priorities=config.stream_priorities)
        self.keep = KeepAlive()
        self.text = TextConditioner(
            c.text_encoder,
            c.tokenizer,
            image_size=config.text_image_size,
            text_tokens=config.text_tokens,
            device=device,
            length_step=config.text_length_step,
            prefix_cache=config.text_prefix_cache,
            compile_lm=config.text_compile and self.cuda,
        )
        # Graph capture is cheap (no compile): the text encoder gets every bucket size.
        text_buckets = [b for b in BATCH_BUCKETS if b <= max(self._buckets)]
        self.text_stage = TextStage(self.text, self.streams, text_buckets, use_graphs=config.compile != "none")
        self.planner = TextPlanner(config, self.text, self.text_stage, self.streams, self.keep)
        cache = self.compile_cache
        encoder_store = None
        if config.compile == "precompile" and self.cuda:  # the VAE encoder's graphs beside the UNet's
            encoder_store = PrecompileStore.beside(cache.directory, f"{cache.package_key}-encode")
        self.reference_encoder = ReferenceEncoder(c.vae, device, config.compile != "none", encoder_store)
        # Installed before the graph is compiled: the adapter is part of the one UNet graph.
        self.adapter = AdapterStage.build(config, c.unet, max(self._buckets), self.latent, self.size, device)
        schedule = FlowSchedule.from_scheduler(c.scheduler, config.steps, self.latent, self.latent)
        stage_args = (c.unet, c.vae, schedule, self.size, config, self.cuda)
        self.denoise = DenoiseStage(*stage_args, store_dir=cache.directory, store_key=cache.package_key)
        self.uploader = FrameUploader(self.streams, device, self.size, self.max_batch)
        self._outputs = [  # rows for the largest bucket: a batch is padded up to it
            torch.empty((max(self._buckets), self.size, self.size, 3), dtype=torch.uint8, pin_memory=self.cuda)
            for _ in range(RING)
        ]
        self._ring = 0
        self._sessions: dict[str, DiffusionSession] = {}
        self.clock = StageClock(self.cuda)
        if self.cuda:
            torch.cuda.synchronize(device)  # constants made on the default stream (text prefix K/V)

    # ---- sessions ---------------------------------------------------------------------------

    def check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.info.max_prompt_chars:
            raise PromptRejected(
                "prompt_too_long",
                f"prompt has {len(prompt)} characters; at most {self.info.max_prompt_chars} are allowed",
            )
        self.planner.tokens(prompt)

    def open_session(self, session_id: str, prompt: str) -> None:
        noise = self.uploader.noise(self.config.seed, self.latent, self.dtype)
        self._sessions[session_id] = DiffusionSession(prompt, self.planner.tokens(prompt), noise)
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

    def reseed(self, session_id: str, seed: int) -> None:
        # Steps in flight keep the noise they were batched with (torch.cat copied it).
        self._sessions[session_id].noise = self.uploader.noise(seed, self.latent, self.dtype)
        if self.adapter is not None:
            self.adapter.restart(session_id)  # its state follows the old noise's frames

    def set_prompt(self, session_id: str, prompt: str) -> None:
        s = self._sessions[session_id]
        start_blend(s, self.config.prompt_blend)
        s.prompt, s.tokens = prompt, self.planner.tokens(prompt)
        s.text_stale = True  # a new prompt refreshes the conditioning at the next step
        if self.adapter is not None:
            self.adapter.restart(session_id)

    # ---- steps ------------------------------------------------------------------------------

    @torch.inference_mode()
    def submit(self, frames: Sequence[FrameIn]) -> _Ticket:
        self.keep.release_finished()
        rows, bucket = len(frames), bucket_for(len(frames), self._buckets)
        slot, self._ring = self._ring, (self._ring + 1) % RING
        sessions = [self._sessions[f.session_id] for f in frames]
        streams, clock, adapter = self.streams, self.clock, self.adapter
        todo = adapter.plan(list({f.session_id: f.image for f in reversed(frames)}.items())) if adapter else []
        with streams.on_side():
            side_marks = clock.new()
            pixels = self.uploader.upload(frames, slot, bucket)
            clock.mark(side_marks, "upload")
            if adapter is not None:
                adapter.embed(todo, streams.main if streams.overlap else None)
                clock.mark(side_marks, "adapter_conditioning")
            reference = self.reference_encoder(pixels)
            clock.mark(side_marks, "vae_encode")
            per_row = self.planner.conditioning(sessions, pixels)
            clock.mark(side_marks, "text_encoder")
            old = [s.blend_from for s in sessions if s.blend_from is not None]
            self.text_stage.wait(per_row + old, streams.side_stream())
            per_row = blended(sessions, per_row, self.config.prompt_blend)
            per_row += [per_row[-1]] * (bucket - rows)
            cond = torch.stack([c.cond for c in per_row])
            cond_mask = torch.stack([c.mask for c in per_row])
            noise = torch.cat([s.noise for s in sessions] + [sessions[-1].noise] * (bucket - rows))
            ready = streams.record()
            self.keep.hold(ready, per_row + old)  # text-stream tensors read by the stacks above
        with streams.on_main():
            streams.wait(streams.main, ready)
            main_marks = clock.new()
            if adapter is not None:
                adapter.write([f.session_id for f in frames])  # main stream: ordered after the last read
            images = self.denoise(noise, reference, cond, cond_mask)
            clock.mark(main_marks, "unet_decode")
            out = self._outputs[slot]
            out[:bucket].copy_(images, non_blocking=True)
            clock.mark(main_marks, "download")
            done = streams.record(blocking=True)  # collect() sleeps on it
        for s in {id(x): x for x in sessions}.values():
            s.steps_since_text += 1
        advance_blends(sessions, self.config.prompt_blend)
        return _Ticket(
            rows,
            out,
            done,
            [reference, noise, cond, cond_mask],
            (side_marks, main_marks),
            [f.session_id for f in frames],
        )

    def collect(self, ticket: _Ticket) -> list[np.ndarray]:
        if ticket.done is not None:
            ticket.done.synchronize()
        ticket.keep.clear()
        self.clock.finish(*ticket.marks)
        # Copy out of the ring buffer: it is reused RING launches later.
        images = [ticket.out[i].numpy().copy() for i in range(ticket.rows)]
        if self.adapter is not None:
            for sid, image in zip(ticket.session_ids, images, strict=True):
                self.adapter.record_output(sid, image)
        return images

    def recover(self, exc: BaseException) -> bool:
        """Contract 3: a CUDA out-of-memory is transient. Wait for what was queued, drop
        in-flight state (the caller drops the step's tickets), free cached memory: True.
        Anything else (or a device that cannot even synchronize) is fatal: False."""
        if not isinstance(exc, torch.cuda.OutOfMemoryError):
            return False
        try:
            if self.cuda:
                torch.cuda.synchronize(self.device)
        except Exception:
            log.exception("device does not synchronize after out-of-memory; giving up")
            return False
        self.keep.clear()
        for s in self._sessions.values():
            s.pending = None  # a background refresh may never have been queued
            s.text_stale = True  # next frame re-encodes (blocking) from a clean state
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        log.warning("out of GPU memory in a step (%s): its frames are dropped, the cache freed", exc)
        return True

    # ---- introspection (/healthz, benchmarks: see tuning.py) and warm-up ---------------------

    def mark_text_stale(self) -> None:
        """Every session's next step encodes its conditioning afresh."""
        for s in self._sessions.values():
            s.text_stale = True

    def device_info(self) -> dict[str, Any]:
        dtype = str(self.dtype).removeprefix("torch.")
        return {**describe_device(self.device), "dtype": dtype, "compile": self.denoise.mode}

    def peak_memory_mb(self, reset: bool = False) -> float | None:
        return peak_memory_mb(self.device, reset)

    def buckets(self) -> list[int]:
        return list(self._buckets)

    def bucket_for(self, rows: int) -> int:
        return bucket_for(rows, self._buckets)

    def warmup(self, progress: Callable[[str], None]) -> None:
        warm_up(self, progress)

    def close(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.keep.clear()
        if self.adapter is not None:
            self.adapter.close_all()
            self.adapter.bank.remove(self._unet)  # the UNet is shared with whoever built it
        self.denoise.close()
        self.reference_encoder.close()
        self._sessions.clear()
        self.planner.clear()
