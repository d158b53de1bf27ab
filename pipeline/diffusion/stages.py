"""Pipeline stages on the device: frame preparation, VAE encode, and the denoise+decode
graph that gets compiled (UNet steps, Euler updates and the VAE decode in one module).

Maths as in diffusers' DreamLiteMobilePipeline (edit mode): the reference latent is
vae.encode(2x-1).latents without scaling, the UNet sees cat([noisy, reference], dim=3)
and its left half is kept, time_ids = [[W, H]], and the output is decode(x / scaling +
shift) * 0.5 + 0.5 clamped to [0, 1].
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.diffusion.aot import AotBuckets, GraphStore
from pipeline.diffusion.graphs import GraphedCall
from pipeline.diffusion.schedule import FlowSchedule

log = logging.getLogger(__name__)


def square_frame(image: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 on the device -> (3, size, size) float32 in [0, 255]: centre crop to
    a square, then resize (antialiased bilinear) when the crop is not already size x size."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    x = image[y0 : y0 + side, x0 : x0 + side].permute(2, 0, 1).float()
    if side != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return x


def host_crop(image: np.ndarray) -> np.ndarray:
    """Centre-square view of a host frame: only these bytes travel to the device."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0 : y0 + side, x0 : x0 + side]


def _encode(vae: Any, frames: torch.Tensor) -> torch.Tensor:
    x = (frames / 255.0) * 2.0 - 1.0
    return vae.encode(x.to(vae.dtype)).latents


@torch.inference_mode()
def encode_reference(vae: Any, frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) float [0, 255] -> reference latents (B, 4, S/8, S/8) in the VAE's dtype."""
    return _encode(vae, frames)


class EncodeReference(nn.Module):
    """encode_reference as a module: what compile='precompile' saves per bucket (the
    module is the saved graph's argument, so the VAE's weights are read live)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return _encode(self.vae, frames)


class ReferenceEncoder:
    """encode_reference, on CUDA compiled (inductor, no CUDA graphs of its own) and captured
    as one CUDA graph per batch bucket: it runs on the side stream, where eager launches
    would cost the engine thread several milliseconds per step. With a store
    (compile='precompile') each bucket's graph is saved and a later start loads it
    instead of tracing it; a store that fails falls back to torch.compile."""

    def __init__(self, vae: Any, device: torch.device, optimise: bool, store: GraphStore | None = None) -> None:
        self.vae = vae
        self.optimise = optimise and device.type == "cuda"
        self._stored: AotBuckets | None = None
        self._compiled: Callable[..., torch.Tensor] | None = None
        if self.optimise and store is not None:
            self._stored = AotBuckets(EncodeReference(vae), store, {}, cuda=False)  # captured below, not there
            self._compiled = self._stored
        elif self.optimise:
            self._compiled = self._torch_compiled()
        self._graphs: dict[int, GraphedCall] = {}

    def _torch_compiled(self) -> Callable[..., torch.Tensor]:
        return torch.compile(functools.partial(encode_reference, self.vae), mode="default", dynamic=False)

    def capture(self, example: torch.Tensor) -> None:
        if self._compiled is None or example.shape[0] in self._graphs:
            return
        try:
            self._graphs[example.shape[0]] = GraphedCall(self._compiled, [example])
        except Exception as exc:
            if self._stored is None:
                raise
            log.warning("VAE-encoder %s failed (%s); compiling it with torch.compile", self._stored.store.kind, exc)
            self.close()
            self._compiled = self._torch_compiled()
            self._graphs[example.shape[0]] = GraphedCall(self._compiled, [example])

    def close(self) -> None:
        if self._stored is not None:
            self._stored.close()
            self._stored = None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        graph = self._graphs.get(frames.shape[0])
        if graph is None:
            return encode_reference(self.vae, frames)
        return graph(frames).clone()  # own copy: the next replay reuses the graph's buffer


class DenoiseDecode(nn.Module):
    """noise, reference latents, text conditioning -> uint8 (B, S, S, 3) frames.

    One module so torch.compile sees the whole per-frame GPU graph (UNet steps + Euler
    updates + decode + uint8 conversion) and CUDA graphs can replay it in one launch."""

    def __init__(self, unet: nn.Module, vae: nn.Module, schedule: FlowSchedule, size: int) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.sigmas = schedule.sigmas
        self.timesteps = schedule.timesteps
        self.dtype = unet.dtype
        self.register_buffer(
            "time_ids",
            torch.tensor([[float(size), float(size)]], dtype=self.dtype, device=unet.device),
            persistent=False,
        )
        cfg = vae.config
        self.latent_scale = float(cfg.get("scaling_factor", 1.0) or 1.0)
        self.latent_shift = float(cfg.get("shift_factor", 0.0) or 0.0)

    def forward(
        self, noise: torch.Tensor, reference: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor
    ) -> torch.Tensor:
        x = noise
        w = noise.shape[-1]
        for i, t in enumerate(self.timesteps):
            timestep = torch.full((noise.shape[0],), t, dtype=self.dtype, device=noise.device)
            v = self.unet(
                torch.cat([x, reference], dim=3),
                timestep,
                encoder_hidden_states=cond,
                encoder_attention_mask=cond_mask,
                added_cond_kwargs={"time_ids": self.time_ids},
                return_dict=False,
            )[0][..., :w]
            # FlowMatchEulerDiscreteScheduler.step: float32 update, back to the model dtype.
            x = (x.float() + (self.sigmas[i + 1] - self.sigmas[i]) * v.float()).to(v.dtype)
        image = self.vae.decode(x / self.latent_scale + self.latent_shift, return_dict=False)[0]
        image = (image.float() * 0.5 + 0.5).clamp(0, 1)
        return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
