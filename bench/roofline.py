"""Shape-only lower bounds for the served UNet + decode step (no GPU needed): every aten op
of one eager step on the meta device, grouped like bench/profile_graph.py's kernels, with
its matrix FLOPs and the bytes it must read and write at least, and the time neither the
card's matrix rate nor its memory bandwidth lets it go under. Scope: analytic, from the
shapes of the full-size reference architecture; no timing. The measured side is
`python -m bench.profile_graph` on a GPU.

    python -m bench.roofline --reference ../shared/reference [--batch 8] [--out FILE]

Elementwise and normalisation ops count their inputs and outputs as if unfused: inductor
fuses most of them, so their bytes are an upper bound of what the compiled graph moves
and the matrix groups' bounds are the ones to compare with a profile.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

MATRIX_TFLOPS = 790.0
"""Dense bf16 matrix rate measured on an H100/H200 (../shared/reference/README.md)."""
HBM_TBPS = 3.35
"""H100 SXM HBM3 bandwidth, the specification (the H200's is 4.8)."""
_SKIP = {"aten.view", "aten._unsafe_view", "aten.t", "aten.permute", "aten.expand", "aten.slice", "aten.select"}
_SKIP |= {"aten.detach", "aten.alias", "aten.unsqueeze", "aten.squeeze", "aten.transpose", "aten.split"}
_SKIP |= {"aten.split_with_sizes", "aten.as_strided", "aten.empty", "aten.lift_fresh", "aten.reshape"}


def op_group(name: str, args: tuple[Any, ...]) -> str:
    if name in ("aten.convolution", "aten.conv2d"):
        weight = args[1]
        if weight.shape[1] == 1 and args[0].shape[1] > 1:
            return "conv depthwise"
        return "conv 1x1" if tuple(weight.shape[2:]) == (1, 1) else "conv kxk"
    if "attention" in name:
        return "attention"
    if name in ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.linear", "aten.matmul"):
        return "gemm"
    if "norm" in name:
        return "norm"
    return "elementwise"


def matrix_flops(name: str, args: tuple[Any, ...], out: Any) -> int:
    """Multiply-adds x 2 of the composite ops inference mode hands the mode undecomposed."""
    if name == "aten.conv2d":  # out elements x (input channels per group x kernel area)
        return 2 * out.numel() * args[1][0].numel()
    if name == "aten.linear":
        return 2 * out.numel() * args[1].shape[1]
    if name == "aten.scaled_dot_product_attention":  # Q K^T and P V
        q, k = args[0], args[1]
        return 4 * q.numel() // q.shape[-1] * k.shape[-2] * q.shape[-1]
    return 0


def aliases_an_input(out: Any, args: tuple[Any, ...]) -> bool:
    """A view or an identity (dropout in eval, a no-op .to(), a contiguous flatten): no bytes move."""
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(first, torch.Tensor):
        return False
    inputs = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
    return any(torch._C._is_alias_of(first, t) for t in inputs)


def nbytes(tensors: list[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class Roofline(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[str, dict[str, float]] = defaultdict(lambda: {"ops": 0, "gflop": 0.0, "mb": 0.0})

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if name in _SKIP or aliases_an_input(out, args):
            return out
        flops = matrix_flops(name, args, out)
        if not flops and func.overloadpacket in flop_registry:
            flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        row = self.groups[op_group(name, args)]
        row["ops"] += 1
        row["gflop"] += flops / 1e9
        row["mb"] += (nbytes(tree_flatten((args, kwargs))[0]) + nbytes(tree_flatten(out)[0])) / 1e6
        return out


def bounds(groups: dict[str, dict[str, float]], tflops: float, tbps: float) -> dict[str, dict[str, float]]:
    """Each group's floor: the slower of its FLOPs at `tflops` and its bytes at `tbps`."""
    out = {}
    for name, g in sorted(groups.items()):
        compute_ms, memory_ms = g["gflop"] / tflops, g["mb"] / 1e3 / tbps
        out[name] = {
            "ops": int(g["ops"]),
            "gflop": round(g["gflop"], 1),
            "mb": round(g["mb"], 1),
            "compute_ms": round(compute_ms, 3),
            "memory_ms": round(memory_ms, 3),
            "floor_ms": round(max(compute_ms, memory_ms), 3),
            "bound": "compute" if compute_ms >= memory_ms else "memory",
        }
    return out


def step_roofline(reference: Path, batch: int, tflops: float = MATRIX_TFLOPS, tbps: float = HBM_TBPS) -> dict[str, Any]:
    """The served step's graph (DenoiseDecode, one step, 512x512, 192 text tokens) on meta."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel

    from pipeline.diffusion.schedule import FlowSchedule
    from pipeline.diffusion.stages import DenoiseDecode
    from pipeline.diffusion.tiny import build_tiny_scheduler

    config = json.loads((reference / "dreamlite_mobile_unet_config.json").read_text())
    meta, dtype = torch.device("meta"), torch.bfloat16
    with meta:
        unet = DreamLiteUNetModel.from_config(config).to(dtype).eval()
        vae = AutoencoderTiny(latent_channels=4).to(dtype).eval()
        step = DenoiseDecode(unet, vae, FlowSchedule.from_scheduler(build_tiny_scheduler(), 1, 64, 64), 512)
        noise = torch.empty(batch, 4, 64, 64, dtype=dtype)
        reference_latents = torch.empty(batch, 4, 64, 64, dtype=dtype)
        cond = torch.empty(batch, 192, config["encoder_hid_dim"], dtype=dtype)
        mask = torch.ones(batch, 192, dtype=torch.long)
    mode = Roofline()
    with torch.inference_mode(), mode:
        step(noise, reference_latents, cond, mask)
    rows = bounds(mode.groups, tflops, tbps)
    matrix = [r for n, r in rows.items() if n.startswith(("conv", "gemm", "attention"))]
    return {
        "scope": "analytic, shapes only (meta device); no timing",
        "batch": batch,
        "assumed": {"matrix_tflops": tflops, "hbm_tbps": tbps},
        "groups": rows,
        "matrix_floor_ms": round(sum(r["floor_ms"] for r in matrix), 3),
        "all_floor_ms_unfused": round(sum(r["floor_ms"] for r in rows.values()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import git_state

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tflops", type=float, default=MATRIX_TFLOPS)
    p.add_argument("--tbps", type=float, default=HBM_TBPS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report = {"argv": sys.argv, "git": git_state(), **step_roofline(args.reference, args.batch, args.tflops, args.tbps)}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
