"""Engine selection: turns an EngineConfig into an EngineSpec (what will run, and why)
before anything is built. Every check that can refuse a configuration runs here, at once
and without torch: a bad --model, a missing diffusion stack, no CUDA device, weights that
are broken or cannot be fetched. The slow part (downloading and loading weights) is left to
the spec's build, which runs on the engine thread once the server is listening."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.client import EngineSpec
from pipeline.config import ConfigError, EngineConfig
from pipeline.core import EngineCore
from pipeline.diffusion.loading import (
    RANDOM_PREFIX,
    TINY,
    ModelLoadError,
    cache_remedy,
    cached_snapshot,
    check_model_dir,
    check_reference,
    local_remedy,
    probe_hub,
    remedies,
)
from pipeline.messages import EngineInfo
from pipeline.preview import PreviewBackend
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)

DIFFUSION_MODULES = ("torch", "diffusers", "transformers")
NO_CUDA = "no CUDA device is available"
INSTALL_STEP = (
    "install the diffusion stack into this environment: `LIVESTYLE_WITH_DIFFUSION=1 scripts/setup.sh serve` "
    "(it installs torch's CUDA build, several GB; see the README's Install section)"
)
INSTALL_DIFFUSION = f"Remedy: {INSTALL_STEP}, or run the CPU preview with --engine preview."
NO_CUDA_REMEDIES = (
    "Remedies: run on a machine with an NVIDIA GPU and driver (nvidia-smi must work); add --device cpu to run "
    "the diffusion engine on the CPU anyway (slow; --model tiny is a quick check); or --engine preview for the "
    "CPU preview stylizer."
)


class EngineUnavailableAtStart(RuntimeError):
    """An explicitly requested engine cannot run here; the message names the remedies."""


@dataclass(frozen=True)
class Weights:
    """Where the diffusion engine's weights come from, decided before the build."""

    where: str
    """'tiny', 'random', 'local' (a folder), 'cache' (the Hugging Face cache) or 'hub' (download first)."""
    path: Path | None
    """The folder to load ('local', 'cache'); None for in-code models and downloads."""
    detail: str


def preview_spec(config: EngineConfig, reason: str) -> EngineSpec:
    def backend() -> PreviewBackend:
        return PreviewBackend(
            size=config.size, max_batch=config.max_batch, max_prompt_chars=config.max_prompt_chars, reason=reason
        )

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        return EngineCore(backend(), stats)  # a fresh backend per build: a rebuild shares nothing

    return EngineSpec(info=backend().info, build=build)


def diffusion_stack_missing() -> str | None:
    """The first module of the diffusion stack this environment lacks (found without importing)."""
    return next((name for name in DIFFUSION_MODULES if importlib.util.find_spec(name) is None), None)


def torch_device(config: EngineConfig) -> tuple[Any, str | None]:
    """(torch.device, None) or (None, why the diffusion engine cannot run)."""
    if (missing := diffusion_stack_missing()) is not None:
        if shutil.which("nvidia-smi") is None:
            return None, "no CUDA device is available (and the diffusion stack is not installed)"
        return None, f"the diffusion stack is not installed ({missing} is missing)"
    import torch

    if config.device == "cpu":
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        if config.model == TINY and config.device == "auto":
            return torch.device("cpu"), None  # tiny random components run fine on a CPU
        return None, NO_CUDA
    device = torch.device("cuda" if config.device == "auto" else config.device)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return None, (
            f"--device {config.device}: this machine has {count} CUDA device(s); "
            f"use --device cuda (the first), cuda:0 .. cuda:{count - 1} or auto"
        )
    return device, None


def diffusion_spec(config: EngineConfig, device: Any, reason: str, weights: Weights | None = None) -> EngineSpec:
    """The diffusion engine; `weights` (from resolve_engine) says where to load from, None
    loads config.model as given."""
    info = EngineInfo(
        kind="diffusion",
        model=config.model,
        reason=reason,
        output_size=config.size,
        max_batch=config.max_batch,
        max_prompt_chars=config.max_prompt_chars,
        adapter=(
            f"temporal LLLite ({config.diffusion.lllite_blocks}, refresh {config.diffusion.lllite_refresh})"
            if config.diffusion.lllite
            else None
        ),
    )
    revision = config.diffusion.revision

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        import torch

        from pipeline.diffusion.backend import DiffusionBackend
        from pipeline.diffusion.loading import download, load_components

        source, source_revision = config.model, revision
        if weights is not None and weights.where == "hub":
            path = download(config.model, revision, progress)
            check_model_dir(path, cache_remedy(config.model, revision, path))
            source, source_revision = str(path), None
        elif weights is not None and weights.path is not None:
            source, source_revision = str(weights.path), None
        progress(f"loading {config.model} ({weights.detail if weights else source}) on {device}")
        t0 = time.monotonic()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        components = load_components(source, source_revision, device, dtype)
        progress(f"loaded {config.model} in {time.monotonic() - t0:.1f} s")
        backend = DiffusionBackend(components, info=info, config=config.diffusion, device=device)
        return EngineCore(backend, stats)

    return EngineSpec(info=info, build=build)


def _needs_diffusion(config: EngineConfig) -> bool:
    """A request only the diffusion engine can serve: --engine diffusion, or a model that is
    clearly meant for it (tiny, random:DIR, a local folder). auto must not silently run the
    preview instead of those."""
    model = config.model
    return (
        config.kind == "diffusion"
        or model == TINY
        or model.startswith(RANDOM_PREFIX)
        or Path(model).expanduser().is_dir()
    )


def _plan_weights(config: EngineConfig) -> tuple[Weights | None, str]:
    """Where the weights will come from, or (None, why they cannot)."""
    model, revision = config.model, config.diffusion.revision
    if model == TINY:
        return Weights(TINY, None, "tiny random components built in code"), ""
    if model.startswith(RANDOM_PREFIX):
        return Weights("random", None, f"full-size random weights from {model[len(RANDOM_PREFIX) :]}"), ""
    path = Path(model).expanduser()
    if path.is_dir():
        check_model_dir(path, local_remedy(path))
        return Weights("local", path, str(path)), ""
    snapshot, why_not = cached_snapshot(model, revision)
    if snapshot is not None:
        try:
            check_model_dir(snapshot, cache_remedy(model, revision, snapshot))
            return Weights("cache", snapshot, f"Hugging Face cache, {snapshot}"), ""
        except ModelLoadError as exc:
            why_not = str(exc)  # a download may complete it; say why if that is not possible either
    reachable, detail = probe_hub(model, revision)
    if reachable:
        return Weights("hub", None, f"downloading from the Hugging Face Hub, {detail}"), ""
    return None, f"{why_not}; {detail}" if snapshot is not None else detail


def resolve_engine(config: EngineConfig) -> EngineSpec:
    """preview: always. diffusion: CUDA (or --device cpu) and weights that resolve, else an
    EngineUnavailableAtStart naming the remedies. auto: diffusion when it can run, else
    preview with the reason (shown on the page and in /healthz); a model only the diffusion
    engine runs (tiny, random:DIR, a folder) is treated as a request for it."""
    if config.kind == "preview":
        return preview_spec(config, "the preview engine was chosen (--engine preview)")
    check_reference(config.model)
    strict = _needs_diffusion(config)
    missing = diffusion_stack_missing()
    if missing is not None:
        no_gpu = shutil.which("nvidia-smi") is None
        if not strict and no_gpu:
            return _fallback(config, "no CUDA device is available (and the diffusion stack is not installed)", "")
        reason = f"the diffusion stack is not installed ({missing} is missing)"
        if no_gpu and config.device != "cpu" and config.model != TINY:  # installing it alone will not do
            return _fallback(config, f"{reason} and {NO_CUDA}", f"{INSTALL_DIFFUSION} {NO_CUDA_REMEDIES}")
        return _fallback(config, reason, INSTALL_DIFFUSION)
    device, why_not = torch_device(config)
    if device is None:
        why_not = why_not or NO_CUDA
        return _fallback(config, why_not, NO_CUDA_REMEDIES if why_not == NO_CUDA else "")
    try:
        weights, why_not = _plan_weights(config)
    except ModelLoadError as exc:
        raise EngineUnavailableAtStart(str(exc)) from None
    if weights is None:
        return _fallback(
            config,
            f"the weights of {config.model} are not available ({why_not})",
            remedies(config.model, config.diffusion.revision),
        )
    reason = f"{config.model} ({weights.detail}) on {device}"
    log.info("engine: diffusion, %s", reason)
    return diffusion_spec(config, device, reason, weights)


def _fallback(config: EngineConfig, reason: str, remedy: str) -> EngineSpec:
    """auto: the preview engine, saying why. An explicit request: refuse, with the remedy."""
    if _needs_diffusion(config):
        who = "--engine diffusion" if config.kind == "diffusion" else f"--model {config.model} (a diffusion model)"
        raise EngineUnavailableAtStart(f"{who} cannot start: {reason}. {remedy}".strip())
    reason = f"{reason}: using the CPU preview stylizer"
    log.warning("engine auto: %s", reason)
    return preview_spec(config, reason)


__all__ = [
    "ConfigError",
    "EngineUnavailableAtStart",
    "Weights",
    "diffusion_spec",
    "diffusion_stack_missing",
    "preview_spec",
    "resolve_engine",
    "torch_device",
]
