"""bench/roofline.py: its FLOP count agrees with torch's FlopCounterMode, views and
identities move no bytes, and each group's floor is the slower of compute and memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.roofline import Roofline, bounds

pytestmark = pytest.mark.unit


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kxk, self.depthwise, self.pointwise = (
            nn.Conv2d(8, 16, 3, padding=1),
            nn.Conv2d(16, 16, 3, groups=16),
            nn.Conv2d(16, 32, 1),
        )
        self.linear = nn.Linear(32, 64)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.pointwise(self.depthwise(self.kxk(x)))
        tokens = self.linear(h.flatten(2).transpose(1, 2)).view(2, -1, 4, 16).transpose(1, 2)
        out = F.scaled_dot_product_attention(tokens, context, context, attn_mask=mask)
        return F.dropout(out, 0.1, training=False) * 2


def run(mode):
    with torch.device("meta"):
        block = Block().to(torch.bfloat16).eval()
        args = (torch.empty(2, 8, 16, 16), torch.empty(2, 4, 24, 16), torch.ones(2, 1, 1, 24, dtype=torch.bool))
        args = tuple(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args)
    with mode:
        block(*args)
    return mode


def test_flops_match_torch_flop_counter_and_groups_are_named():
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(torch.no_grad())
    roof = Roofline()
    with torch.inference_mode():
        run(roof)
    assert round(sum(g["gflop"] for g in roof.groups.values()) * 1e9) == counter.get_total_flops()
    assert {"conv kxk", "conv depthwise", "conv 1x1", "gemm", "attention", "elementwise"} <= set(roof.groups)
    assert roof.groups["conv depthwise"]["ops"] == 1 and roof.groups["attention"]["gflop"] > 0


def test_views_and_identities_move_no_bytes():
    roof = Roofline()
    with torch.inference_mode(), roof:
        x = torch.empty(4, 8, 16, device="meta", dtype=torch.bfloat16)
        F.dropout(x.flatten(1).view(4, 128), 0.5, training=False).to(torch.bfloat16)
    assert dict(roof.groups) == {}
    with torch.inference_mode(), roof:
        (x * 2).to(torch.float32)  # two real ops: 1 KiB read, 1 KiB + 2 KiB written
    assert roof.groups["elementwise"]["ops"] == 2
    assert roof.groups["elementwise"]["mb"] == pytest.approx((1024 * 3 + 2048) / 1e6)


def test_floor_is_the_slower_of_compute_and_memory():
    rows = bounds(
        {"gemm": {"ops": 1, "gflop": 790.0, "mb": 335.0}, "norm": {"ops": 2, "gflop": 0.0, "mb": 3350.0}}, 790.0, 3.35
    )
    assert rows["gemm"] == {**rows["gemm"], "compute_ms": 1.0, "memory_ms": 0.1, "floor_ms": 1.0, "bound": "compute"}
    assert rows["norm"]["floor_ms"] == 1.0 and rows["norm"]["bound"] == "memory"
