"""The small module the stored-graph tests compile (tests/test_aot.py, test_precompile.py):
a conv, a linear layer and two buffers written between calls, like the adapter's
per-session state (`gate` is small enough that inductor would inline it as literals), and
a non-tensor attribute like the schedule's sigmas. test_precompile.py copies this file
to change its source as an upgrade would."""

import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lin = nn.Linear(8, 8)
        self.register_buffer("gate", torch.ones(8))
        self.register_buffer("bias_map", torch.zeros(2, 8, 8, 8))
        self.scale = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.lin(y) * self.gate * self.scale + self.bias_map[: x.shape[0]]


def inputs(batch: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch)),)
