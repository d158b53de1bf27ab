"""FP8 (E4M3) matrix products for the UNet's large linear layers (`fp8` = 'linear').

Each eligible nn.Linear becomes an Fp8Linear: its weight quantized once, per output
row, and each input quantized per token as it arrives, then one torch._scaled_mm with
both row-wise scales and the bias added in the output dtype. On Hopper-class GPUs the
FP8 tensor cores run at twice the bf16 rate; inside the compiled graph inductor fuses
the input's quantization (absolute max, scale, cast) into one kernel before the GEMM.

Which layers: those inside the transformer blocks (SITES) whose two sizes are multiples
of 16 (what _scaled_mm needs) and at least `min_features` (for small GEMMs the extra pass
over the input costs more than the faster product gains), except the adapter's sites
(lllite.HOST_PATTERN): the temporal adapter wraps those nn.Linear modules and keeps their
inputs in bf16. How far the engine's outputs move from the bf16 path is measured, not
assumed: tests/test_fp8.py on CPU with the tiny model, and on the GPU `python -m
bench.gpu_check --fp8 linear` with full-size weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from pipeline.diffusion.lllite import HOST_PATTERN

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
TINY = 1e-12
"""Floor of a scale: an all-zero row quantizes to zeros instead of dividing by zero."""
MIN_FEATURES = 256
"""Smallest input or output size converted by default."""
SITES = ("transformer_blocks.",)
"""Where in the UNet the converted layers are: the attentions and feed-forwards. Not the
transformers' proj_in/proj_out (on the tiny CPU model those alone moved the output by
1.9 uint8 levels on average, against 0.35 for everything inside the blocks), nor the
time and conditioning embeddings."""


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (E4M3 values, float32 (M, 1) scales) with x ~= values * scales."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=TINY) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """y = x W^T + b with W and x in E4M3 (W per output row, x per token), out in x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)  # (N, K) row-major: its .t() is the column-major mat2
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, N)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        y = torch._scaled_mm(values, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def eligible(name: str, module: nn.Module, min_features: int) -> bool:
    return (
        type(module) is nn.Linear  # not a subclass or a wrapper (the adapter's AdaptedLinear)
        and any(site in name for site in SITES)
        and not HOST_PATTERN.search(name)
        and min(module.in_features, module.out_features) >= min_features
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def install_fp8_linear(unet: nn.Module, min_features: int | None = None) -> Callable[[], None]:
    """Convert the eligible layers in place (sizes >= min_features, default MIN_FEATURES);
    returns the undo (the module is shared with whoever built it)."""
    min_features = MIN_FEATURES if min_features is None else min_features
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    for name, module in list(unet.named_modules()):
        if not eligible(name, module, min_features):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        setattr(parent, child, Fp8Linear(module))
        swapped.append((parent, child, module))
    log.info("fp8: %d linear layers of the UNet in E4M3", len(swapped))

    def undo() -> None:
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)
        swapped.clear()

    return undo
