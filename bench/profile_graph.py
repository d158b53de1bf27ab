"""Per-kernel profile of the graph the engine serves (GPU development tool): the compiled
UNet + Euler + decode graph of one batch bucket, built by DiffusionBackend with the given
settings exactly as a server builds it, then

* its CUDA kernels under torch.profiler, grouped (convolution, GEMM, attention, triton =
  inductor's fused pointwise/norm kernels, other), with the GPU's idle share of the step;
* the matrix work of each group (torch's FlopCounterMode on the eager module) and the
  rate each group reaches in the compiled graph;
* every convolution module timed alone in both memory layouts (which layer wants which),
  and every attention call's shape timed under each SDPA backend.

    python -m bench.profile_graph --reference DIR [--batch 8] [--compile reduce-overhead]
        [--set fuse_qkv=1 --set channels_last=all ...] [--out-dir bench/results/profiles]

`livestyle bench` is the benchmark; this explains where a step's time goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.gpu_check import cuda_ms

GROUPS = ("attention", "convolution", "gemm", "triton", "other")
_PATTERNS = (  # first match wins: cuDNN's attention kernels also say "cudnn"
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cutlassF", re.I)),
    ("convolution", re.compile(r"conv|fprop|implicit|cudnn|winograd|depthwise", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|cublas|splitK|Kernel2", re.I)),
    ("triton", re.compile(r"^triton_")),
)
_FLOP_GROUPS = {"convolution": "convolution", "mm": "gemm", "addmm": "gemm", "bmm": "gemm", "baddbmm": "gemm"}


def kernel_group(name: str) -> str:
    for group, pattern in _PATTERNS:
        if pattern.search(name):
            return group
    return "other"


def kernel_profile(fn: Callable[[], Any], step_ms: float, steps: int = 5, top: int = 30) -> dict[str, Any]:
    """Kernels of `steps` calls: per group ms per step, the top kernels, and the share of
    the step (`step_ms`, CUDA-event time) in which no kernel ran."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    fn()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync()
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]
    rows = [e for e in rows if not re.search(r"memcpy|memset", e.key, re.I)]
    per_group: dict[str, float] = defaultdict(float)
    for e in rows:
        per_group[kernel_group(e.key)] += e.device_time_total / 1000 / steps
    busy = sum(per_group.values())
    rows.sort(key=lambda e: -e.device_time_total)
    return {
        "kernels_per_step": sum(e.count for e in rows) // steps,
        "busy_ms": round(busy, 3),
        "idle_share": round(1 - busy / step_ms, 3) if cuda else None,
        "groups_ms": {g: round(per_group.get(g, 0.0), 3) for g in GROUPS},
        "top": [
            {
                "kernel": e.key[:140],
                "group": kernel_group(e.key),
                "ms": round(e.device_time_total / 1000 / steps, 3),
                "calls": e.count // steps,
            }
            for e in rows[:top]
        ],
    }


def flops_by_group(fn: Callable[[], Any]) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    out: dict[str, float] = defaultdict(float)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).removeprefix("aten.").split(".")[0]
        group = "attention" if "attention" in name else _FLOP_GROUPS.get(name, "other")
        out[group] += n / 1e9
    return {g: round(v, 1) for g, v in out.items()}


@contextmanager
def recording(cls: type[nn.Module], calls: list[tuple[nn.Module, torch.Tensor]]) -> Iterator[None]:
    """Record (module, input) of every call of modules of `cls` inside the block."""
    original = cls.forward

    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append((self, x))
        return original(self, x, *args, **kwargs)

    cls.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.forward = original  # type: ignore[method-assign]


def conv_layouts(fn: Callable[[], Any]) -> dict[str, Any]:
    """Each Conv2d call of one eager step timed alone, NCHW vs channels-last, summed by
    kind (depthwise, 1x1, kxk): what each layout would cost and what per-layer choice saves."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    with recording(nn.Conv2d, calls):
        fn()
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "nchw_ms": 0.0, "nhwc_ms": 0.0, "best_ms": 0.0})
    for conv, x in calls:
        assert isinstance(conv, nn.Conv2d)
        kind = (
            "depthwise"
            if conv.groups > 1 and conv.groups == conv.in_channels
            else ("1x1" if conv.kernel_size == (1, 1) else f"{conv.kernel_size[0]}x{conv.kernel_size[1]}")
        )
        w, b = conv.weight, conv.bias
        times = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            xi, wi = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            run = functools.partial(F.conv2d, xi, wi, b, conv.stride, conv.padding, conv.dilation, conv.groups)
            times.append(cuda_ms(run, 10))
        s = sums[kind]
        s["n"] += 1
        s["nchw_ms"] += times[0]
        s["nhwc_ms"] += times[1]
        s["best_ms"] += min(times)
    return {k: {n: round(v, 3) for n, v in s.items()} for k, s in sums.items()}


def attention_backends(fn: Callable[[], Any]) -> list[dict[str, Any]]:
    """Every distinct SDPA call shape of one eager step, timed under each backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    original = F.scaled_dot_product_attention

    def spy(*args: Any, **kw: Any) -> Any:
        names = ("query", "key", "value", "attn_mask")
        got = dict(zip(names, args, strict=False)) | {n: kw[n] for n in names if n in kw}
        q, k, mask = got["query"], got["key"], got.get("attn_mask")
        key = (tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape), kw.get("enable_gqa"))
        entry = seen.setdefault(key, {"q": list(q.shape), "k": list(k.shape), "mask": key[2], "calls": 0})
        entry["calls"] += 1
        entry.setdefault("call", functools.partial(original, *args, **kw))
        return original(*args, **kw)

    F.scaled_dot_product_attention = spy  # diffusers looks it up at call time
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = original
    rows = []
    for entry in seen.values():
        run = entry.pop("call")
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    ms = cuda_ms(run, 10)
                entry[backend.name.lower()] = round(ms * entry["calls"], 3)
            except Exception as exc:  # noqa: BLE001 - a backend that refuses this shape or mask
                entry[backend.name.lower()] = f"n/a: {str(exc).splitlines()[0][:80]}"
        entry["default_ms"] = round(cuda_ms(run, 10) * entry["calls"], 3)  # torch's own pick
        rows.append(entry)
    return rows


def settings_of(pairs: list[str]) -> dict[str, Any]:
    from pipeline.config import DiffusionConfig

    types = {f.name: f.type for f in dataclasses.fields(DiffusionConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types:
            raise SystemExit(f"--set {pair}: {name!r} is not a DiffusionConfig field ({', '.join(types)})")
        kind = str(types[name])
        if "bool" in kind:
            out[name] = value.lower() in ("1", "true", "yes", "on")
        elif "tuple" in kind:
            out[name] = tuple(int(x) if x.isdigit() else x for x in value.split(",") if x)
        elif kind.startswith("int"):
            out[name] = int(value)
        else:
            out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import gpu_check as g
    from bench.provenance import git_state
    from pipeline.diffusion.device import describe_device

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", default="reduce-overhead")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="DiffusionConfig field")
    p.add_argument("--cache", default=None, help="compile-cache directory (default: the engine's)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results/profiles"))
    p.add_argument("--tag", default="")
    p.add_argument("--smoke", action="store_true", help="tiny components on the CPU (tests the tool itself)")
    args = p.parse_args(argv)
    g.SMOKE["on"] = args.smoke
    settings = {"compile": args.compile, "buckets": (args.batch,), **settings_of(args.set)}
    if args.cache:
        settings["compile_cache_dir"] = args.cache
    shown = {k: str(v) for k, v in settings.items()}
    report: dict[str, Any] = {"argv": sys.argv, "git": git_state(), "settings": shown}
    t0 = time.monotonic()
    c = g.components(args.reference)
    b = g.make_backend(c, args.batch, **settings)
    b.warmup(lambda m: print(f"  {m}", flush=True))
    report["device"] = describe_device(b.device)
    report["warmup_s"] = round(time.monotonic() - t0, 1)
    n = args.batch
    with torch.inference_mode():
        frames = torch.rand(n, 3, 512, 512, device=b.device) * 255
        noise = torch.randn(n, 4, b.latent, b.latent, device=b.device, dtype=b.dtype)
        cond = torch.randn(n, 192, c.text_encoder.config.text_config.hidden_size, device=b.device).to(b.dtype) * 3
        mask = torch.ones(n, 192, dtype=torch.long, device=b.device)
        mask[:, 120:] = 0
        latents = b.reference_encoder(frames)  # the layout the graph was compiled for
    if b.cuda:
        torch.cuda.synchronize()

    def served() -> Any:
        return b.denoise(noise, latents, cond, mask)

    def eager() -> Any:
        with b.denoise.eager_only():
            return b.denoise(noise, latents, cond, mask)

    with torch.inference_mode(), b.streams.on_main():
        report["served_ms"] = round(cuda_ms(served), 3)
        report["served_fps_ceiling"] = round(1000 * n / report["served_ms"], 1)
        print("served", report["served_ms"], "ms", flush=True)
        report["served_kernels"] = kernel_profile(served, report["served_ms"])
        report["eager_ms"] = round(cuda_ms(eager, 5), 3)
        report["eager_kernels"] = kernel_profile(eager, report["eager_ms"], 2, 20)
        report["gflop_per_step"] = flops_by_group(eager)
        groups = report["served_kernels"]["groups_ms"]
        report["served_tflops_by_group"] = {
            k: round(v / groups[k], 1) for k, v in report["gflop_per_step"].items() if groups.get(k)
        }
        matrix_ms = groups["convolution"] + groups["gemm"]  # conv1x1_mm turns 1x1 convolutions into GEMMs
        matrix_gflop = sum(report["gflop_per_step"].get(k, 0.0) for k in ("convolution", "gemm"))
        report["served_tflops_by_group"]["convolution+gemm"] = round(matrix_gflop / matrix_ms, 1) if matrix_ms else None
        print(json.dumps({k: report[k] for k in ("served_kernels", "gflop_per_step")})[:3000], flush=True)
        save(report, args.out_dir, args.tag)
        for name, section in (("conv_layouts", conv_layouts), ("attention_backends", attention_backends)):
            try:  # a section that fails is recorded; the sections before it are kept
                report[name] = section(eager)
            except Exception as exc:  # noqa: BLE001 - a development tool reports, it does not abort
                report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(name, json.dumps(report[name], default=str)[:2000], flush=True)
            save(report, args.out_dir, args.tag)
    b.close()
    return 0


def save(report: dict[str, Any], out_dir: Path, tag: str) -> None:
    card = str(report["device"].get("gpu") or "cpu").replace(" ", "-")
    batch = report["settings"]["buckets"].strip("(),")
    out = out_dir / f"{time.strftime('%Y-%m-%d')}-{card}-graph-profile-b{batch}{'-' + tag if tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
