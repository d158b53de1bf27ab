"""The main-stream stage: UNet steps + Euler + VAE decode + uint8, compiled per bucket.

Static shapes, one graph per bucket: measured 30 % faster than one batch-dynamic graph
(H100, B=8: 26.3 vs 34.0 ms), at ~1.5 minutes of warm-up per bucket (cached on disk,
see compile_cache.py). compile='precompile' saves the same graphs with dynamo's
precompile (precompile.py) and compile='aot' builds them as AOTInductor packages
(aot.py): a later start loads either without tracing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.config import DiffusionConfig
from pipeline.diffusion.aot import AotBuckets, AotStore, GraphStore
from pipeline.diffusion.fp8 import install_fp8_linear
from pipeline.diffusion.precompile import PrecompileStore
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.stages import DenoiseDecode
from pipeline.diffusion.unet_opts import install_channels_last, install_fused_projections

log = logging.getLogger(__name__)

INDUCTOR_SWITCHES: dict[str, dict[str, Any]] = {
    # 1x1 convolutions as matrix products (the separable-conv UNet has many): inductor
    # can then fuse their epilogues; no extra compile time.
    "conv1x1_mm": {"conv_1x1_as_mm": True},
    # Tune each generated kernel's launch config by coordinate descent (diffusers' SDXL
    # recipe): faster kernels, noticeably longer first compile (cached afterwards).
    "coordinate_descent": {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True},
    # No epilogue fusion into GEMM templates (the same recipe pairs it with the above).
    "no_epilogue_fusion": {"epilogue_fusion": False},
}


STORED_MODES = ("precompile", "aot")
"""Modes whose graphs come from a store on disk (AotBuckets); they compile on the CPU too."""


def pick_compile_mode(mode: str, cuda: bool) -> str:
    if mode == "auto":
        return "reduce-overhead" if cuda else "none"
    if mode not in ("none", *STORED_MODES) and not cuda:
        log.warning("torch.compile mode %s needs CUDA here; running the UNet eagerly", mode)
        return "none"
    return mode


def compile_options(mode: str, switches: tuple[str, ...]) -> dict[str, Any]:
    """torch.compile(options=...) for a mode plus inductor switches (mode and options
    cannot both be passed; reduce-overhead is inductor's triton.cudagraphs option)."""
    # Stored graphs are CUDA-graphed by hand (AotBuckets), not by inductor.
    options: dict[str, Any] = {} if mode in STORED_MODES else {"triton.cudagraphs": mode == "reduce-overhead"}
    for name in switches:
        options.update(INDUCTOR_SWITCHES[name])
    return options


class DenoiseStage:
    def __init__(
        self,
        unet: Any,
        vae: Any,
        schedule: FlowSchedule,
        size: int,
        config: DiffusionConfig,
        cuda: bool,
        store_dir: Path | None = None,
        store_key: str = "uncached",
    ):
        self._undo: list[Callable[[], None]] = [install_channels_last(config.channels_last, unet, vae)]
        if config.fuse_qkv:
            self._undo.append(install_fused_projections(unet))
        if config.fp8 == "linear":  # after fusing: the fused projections are converted too
            self._undo.append(install_fp8_linear(unet))
        self.eager = DenoiseDecode(unet, vae, schedule, size)
        self.cuda = cuda
        self.mode = pick_compile_mode(config.compile, cuda)
        self.switches = config.inductor
        self._fn: Callable[..., torch.Tensor] = self.eager
        self.aot: AotBuckets | None = None
        """The stored graphs of compile='precompile' or 'aot'."""
        self._store_dir, self._store_key = store_dir, store_key
        self._compile()

    def _store(self) -> GraphStore:
        """<compile cache>/precompiled or /aot; a temporary directory without a cache."""
        where = self._store_dir
        if self.mode == "precompile":
            return PrecompileStore.beside(where, self._store_key)
        return AotStore(None if where is None else where / "aot", self._store_key)

    def _compile(self) -> None:
        self._fn = self.eager
        if self.aot is not None:
            self.aot.close()
            self.aot = None
        if self.mode in STORED_MODES:
            options = compile_options(self.mode, self.switches)
            self.aot = AotBuckets(self.eager, self._store(), options, self.cuda)
            self._fn = self.aot
        elif self.mode != "none":
            self._fn = torch.compile(self.eager, dynamic=False, options=compile_options(self.mode, self.switches))
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)

    def degrade(self, exc: BaseException) -> bool:
        """After the compiled graph failed to build (warm-up): drop the inductor switches,
        then compiling altogether. False once nothing is left to drop."""
        if self.mode == "none":
            return False
        if self.mode in STORED_MODES:
            kind = self.aot.store.kind if self.aot is not None else self.mode
            log.warning("UNet compile as a stored %s failed (%s); compiling with torch.compile instead", kind, exc)
            self.mode = "reduce-overhead" if self.cuda else "none"
        elif self.switches:
            log.warning("UNet compile with inductor switches %s failed (%s); retrying without", self.switches, exc)
            self.switches = ()
        else:
            log.warning("UNet compile (%s) failed (%s); running the UNet eagerly", self.mode, exc)
            self.mode = "none"
        self._compile()  # a new backend: dynamo's backend guard recompiles, other graphs stay intact
        return True

    def __call__(self, noise: torch.Tensor, reference: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor):
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return self._fn(noise, reference, cond, mask)

    @contextlib.contextmanager
    def eager_only(self) -> Iterator[None]:
        """Run the same module uncompiled inside the block (compiled-vs-eager checks)."""
        saved = self.mode, self._fn
        self.mode, self._fn = "none", self.eager
        try:
            yield
        finally:
            self.mode, self._fn = saved

    def close(self) -> None:
        if self.aot is not None:
            self.aot.close()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
