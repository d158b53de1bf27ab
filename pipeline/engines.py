"""Engine selection: turns an EngineConfig into an EngineSpec (what will run, and why)
before anything is built. Importing this module does not import torch; choosing the
diffusion engine does."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from pipeline.client import EngineSpec
from pipeline.config import ConfigError, EngineConfig
from pipeline.core import EngineCore
from pipeline.messages import EngineInfo
from pipeline.preview import PreviewBackend
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)


class EngineUnavailableAtStart(RuntimeError):
    """An explicitly requested engine cannot run here; the message names the remedies."""


def preview_spec(config: EngineConfig, reason: str) -> EngineSpec:
    def backend() -> PreviewBackend:
        return PreviewBackend(
            size=config.size, max_batch=config.max_batch, max_prompt_chars=config.max_prompt_chars, reason=reason
        )

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        return EngineCore(backend(), stats)  # a fresh backend per build: a rebuild shares nothing

    return EngineSpec(info=backend().info, build=build)


def torch_device(config: EngineConfig) -> tuple[Any, str | None]:
    """(torch.device, None) or (None, why the diffusion engine cannot run)."""
    try:
        import diffusers  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        if shutil.which("nvidia-smi") is None:
            return None, "no CUDA device is available (and the diffusion stack is not installed)"
        return None, f"the diffusion stack is not installed ({exc.name}); install livestyle[diffusion]"
    if config.device == "cpu":
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        if config.model == "tiny" and config.device == "auto":
            return torch.device("cpu"), None  # tiny random components run fine on a CPU
        return None, "no CUDA device is available"
    return torch.device("cuda" if config.device == "auto" else config.device), None


def diffusion_spec(config: EngineConfig, device: Any, reason: str) -> EngineSpec:
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

    def build(stats: EngineStats, progress: Callable[[str], None]) -> EngineCore:
        import torch

        from pipeline.diffusion.backend import DiffusionBackend
        from pipeline.diffusion.loading import load_components

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        components = load_components(config.model, config.diffusion.revision, device, dtype)
        backend = DiffusionBackend(components, info=info, config=config.diffusion, device=device)
        return EngineCore(backend, stats)

    return EngineSpec(info=info, build=build)


def resolve_engine(config: EngineConfig) -> EngineSpec:
    """preview: always. diffusion: CUDA (or --device cpu) and weights that resolve, else an
    EngineUnavailableAtStart naming the remedies. auto: diffusion when it can run, else
    preview with the reason (shown on the page and in /healthz)."""
    if config.kind == "preview":
        return preview_spec(config, "the preview engine was chosen (--engine preview)")
    device, why_not = torch_device(config)
    if device is None:
        return _fallback(config, f"{why_not}: using the CPU preview stylizer")
    from pipeline.diffusion.loading import download_weights, is_hub_id, remedies, weights_location

    where, detail = weights_location(config.model, config.diffusion.revision)
    if where is None and is_hub_id(config.model):
        log.info("model %s not found locally (%s): trying to download it", config.model, detail)
        where, detail = download_weights(config.model, config.diffusion.revision)
    if where is None:
        return _fallback(
            config,
            f"the weights of {config.model} are not available ({detail}). "
            + remedies(config.model, config.diffusion.revision),
        )
    reason = f"{config.model} ({where}) on {device}"
    log.info("engine: diffusion, %s", reason)
    return diffusion_spec(config, device, reason)


def _fallback(config: EngineConfig, reason: str) -> EngineSpec:
    if config.kind == "diffusion":
        raise EngineUnavailableAtStart(f"--engine diffusion cannot start: {reason}")
    log.warning("engine auto: %s", reason)
    return preview_spec(config, reason)


__all__ = ["ConfigError", "EngineUnavailableAtStart", "diffusion_spec", "preview_spec", "resolve_engine"]
