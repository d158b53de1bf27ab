"""Engine selection: turns an EngineConfig into an EngineSpec (what will run, and why)
without building it. Importing this module does not import torch."""

from __future__ import annotations

import logging

from pipeline.client import EngineSpec
from pipeline.config import EngineConfig
from pipeline.core import EngineCore
from pipeline.preview import PreviewBackend
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)


def preview_spec(config: EngineConfig, reason: str) -> EngineSpec:
    backend = PreviewBackend(
        size=config.size, max_batch=config.max_batch, max_prompt_chars=config.max_prompt_chars, reason=reason
    )

    def build(stats: EngineStats) -> EngineCore:
        return EngineCore(backend, stats)

    return EngineSpec(info=backend.info, build=build)


def resolve_engine(config: EngineConfig) -> EngineSpec:
    if config.kind == "preview":
        return preview_spec(config, "the preview engine was chosen (--engine preview)")
    reason = "the diffusion engine is not available in this build: using the CPU preview stylizer"
    if config.kind == "diffusion":
        raise RuntimeError(reason)
    log.warning("engine auto: %s", reason)
    return preview_spec(config, reason)
