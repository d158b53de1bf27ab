"""Flow-matching Euler schedule, computed once.

The scheduler object is asked exactly once, at engine start, for the sigmas and
timesteps the pipeline would use (linspace(1, 1/N, N) with the resolution-dependent
shift mu); the per-frame path only reads these floats and does
`x = x + (sigma_next - sigma) * v` itself, with no stateful scheduler calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusers.pipelines.dreamlite.pipeline_dreamlite_mobile import calculate_shift


@dataclass(frozen=True)
class FlowSchedule:
    sigmas: tuple[float, ...]
    """N+1 values from 1 down to the terminal 0."""
    timesteps: tuple[float, ...]
    """N model timesteps (sigma * num_train_timesteps)."""

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_scheduler(cls, scheduler: Any, steps: int, latent_h: int, latent_w: int) -> FlowSchedule:
        """As DreamLiteMobilePipeline.__call__ sets it up (mu from the noise latent's size)."""
        cfg = scheduler.config
        mu = calculate_shift(
            latent_h * latent_w // 4,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.16),
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
        return cls(
            sigmas=tuple(float(s) for s in scheduler.sigmas),
            timesteps=tuple(float(t) for t in scheduler.timesteps),
        )
