"""Engine configuration: a frozen dataclass validated on construction.

Built by server/config.py (the only code that reads CLI and environment); the
engine itself never looks at argv or os.environ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngineKind = Literal["auto", "diffusion", "preview"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "diffusion", "preview")
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says what was given and what is."""


@dataclass(frozen=True)
class EngineConfig:
    kind: EngineKind = "auto"
    """Which engine: 'diffusion' (GPU model), 'preview' (CPU filter) or 'auto' (diffusion
    when CUDA is present and the weights resolve, else preview)."""
    model: str = "carlofkl/DreamLite-mobile"
    """Hugging Face repo id or local directory of the diffusion model; 'tiny' builds tiny
    random components in code (smoke tests, no network)."""
    max_batch: int = 8
    """Most frames stylized in one engine step (one per session); one of 1, 2, 4, 8, 16."""
    size: int = 512
    """Output frame side in pixels (square)."""
    max_prompt_chars: int = 500
    """Longest prompt accepted, in characters (the diffusion engine also checks tokens)."""
    device: str = "auto"
    """Torch device for the diffusion engine: 'auto', 'cuda', 'cuda:N' or 'cpu'."""

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ConfigError(f"engine {self.kind!r} is not known; use one of {', '.join(ENGINE_KINDS)}")
        if self.max_batch not in BATCH_BUCKETS:
            raise ConfigError(
                f"max_batch {self.max_batch} is not allowed; use one of {', '.join(map(str, BATCH_BUCKETS))}"
            )
        if self.size % 64 != 0 or not 128 <= self.size <= 1024:
            raise ConfigError(f"size {self.size} is not allowed; use a multiple of 64 from 128 to 1024")
        if not 1 <= self.max_prompt_chars <= 4000:
            raise ConfigError(f"max_prompt_chars {self.max_prompt_chars} is not allowed; use 1..4000")
        if not self.model.strip():
            raise ConfigError("model must not be empty; give a Hugging Face id, a local directory or 'tiny'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device {self.device!r} is not allowed; use auto, cpu, cuda or cuda:N")
