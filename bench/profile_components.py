"""Component profiler (GPU): each model stage alone at batch B on an idle GPU, with CUDA
events, plus the top CUDA kernels of each stage from torch.profiler. A development tool
behind the numbers in docs/performance.md; `livestyle bench` is the benchmark.

    python -m bench.profile_components --reference DIR [--batch 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.config import DiffusionConfig
from pipeline.diffusion.loading import build_reference_sized
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.stages import DenoiseDecode
from pipeline.diffusion.text import TextConditioner


def cuda_ms(fn: Callable[[], Any], iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def top_kernels(fn: Callable[[], Any], n: int = 12) -> list[dict[str, Any]]:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:n]:
        rows.append(
            {"kernel": e.key[:110], "ms_per_call": round(e.device_time_total / 3 / 1000, 3), "count": e.count // 3}
        )
    return rows


def graph_variants(
    report: dict[str, Any], c: Any, text: Any, tokens: Any, frames: Any, x: Any, stages: dict[str, Any]
) -> None:
    """Manual CUDA graphs of the side-stream stages, and channels-last eager timings."""
    from pipeline.diffusion.graphs import GraphedCall

    ids, _ = text.host_inputs(tokens)
    try:
        g_text = GraphedCall(text.forward, [frames, ids])
        report["graphed_text_encoder_ms"] = round(cuda_ms(lambda: g_text(frames, ids)), 3)
        diff = (g_text(frames, ids).float() - text.forward(frames, ids).float()).abs().max().item()
        report["graphed_text_encoder_max_diff"] = diff
    except Exception as exc:  # noqa: BLE001 - report, do not abort the profile
        report["graphed_text_encoder_error"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        g_vae = GraphedCall(lambda t: c.vae.encode(t).latents, [x])
        report["graphed_vae_encode_ms"] = round(cuda_ms(lambda: g_vae(x)), 3)
    except Exception as exc:  # noqa: BLE001
        report["graphed_vae_encode_error"] = f"{type(exc).__name__}: {exc}"[:500]
    c.unet.to(memory_format=torch.channels_last)
    c.vae.to(memory_format=torch.channels_last)
    report["eager_channels_last_ms"] = {
        k: round(cuda_ms(stages[k]), 3) for k in ("unet", "vae_decode", "vae_encode", "denoise_decode")
    }
    c.unet.to(memory_format=torch.contiguous_format)
    c.vae.to(memory_format=torch.contiguous_format)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("profile.json"))
    p.add_argument("--variants", default="eager,graphs,static,dynamic,vae", help="comma-separated")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    dev, dtype, b = torch.device("cuda"), torch.bfloat16, args.batch
    c = build_reference_sized(dev, dtype, args.reference)
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "batch": b, "torch": torch.__version__}

    frames = torch.rand(b, 3, 512, 512, device=dev) * 255
    x = (frames / 255 * 2 - 1).to(dtype)
    noise = torch.randn(b, 4, 64, 64, device=dev, dtype=dtype)
    ref = c.vae.encode(x).latents
    cfg = DiffusionConfig()
    text = TextConditioner(
        c.text_encoder, c.tokenizer, image_size=cfg.text_image_size, text_tokens=cfg.text_tokens, device=dev
    )
    tokens = [text.tokens("oil painting, vibrant colors")] * b
    cond, mask = text.encode(frames, tokens)
    sched = FlowSchedule.from_scheduler(c.scheduler, 1, 64, 64)
    dd = DenoiseDecode(c.unet, c.vae, sched, 512)

    with torch.inference_mode():
        stages: dict[str, Callable[[], Any]] = {
            "vae_encode": lambda: c.vae.encode(x).latents,
            "text_encoder": lambda: text.encode(frames, tokens),
            "text_encoder_text_only": lambda: text.encode(None, [text.tokens("oil painting", with_image=False)] * b),
            "unet": lambda: c.unet(
                torch.cat([noise, ref], 3),
                torch.full((b,), 1000.0, device=dev, dtype=dtype),
                encoder_hidden_states=cond,
                encoder_attention_mask=mask,
                added_cond_kwargs={"time_ids": dd.time_ids},
                return_dict=False,
            ),
            "vae_decode": lambda: c.vae.decode(noise, return_dict=False),
            "denoise_decode": lambda: dd(noise, ref, cond, mask),
        }
        if "eager" in args.variants:
            report["eager_ms"] = {k: round(cuda_ms(f), 3) for k, f in stages.items()}
            print("eager", report["eager_ms"], flush=True)
            report["eager_top_kernels"] = {k: top_kernels(stages[k]) for k in ("unet", "vae_decode", "vae_encode")}

        if "graphs" in args.variants:
            graph_variants(report, c, text, tokens, frames, x, stages)

        variants = args.variants.split(",")

        def timed_compile(name: str, fn: Callable[..., Any], first_batch: int) -> None:
            """Compile (first call at first_batch), then time the B=b graph."""
            t0 = time.time()
            small = (noise[:first_batch], ref[:first_batch], cond[:first_batch], mask[:first_batch])
            if name == "dynamic":
                for t in small:
                    torch._dynamo.mark_dynamic(t, 0)
            torch.compiler.cudagraph_mark_step_begin()
            fn(*small)

            def run() -> Any:
                torch.compiler.cudagraph_mark_step_begin()
                return fn(noise, ref, cond, mask)

            run()
            report[f"{name}_compile_s"] = round(time.time() - t0, 1)
            report[f"{name}_denoise_decode_ms"] = round(cuda_ms(run), 3)
            print(name, report[f"{name}_denoise_decode_ms"], report[f"{name}_compile_s"], flush=True)
            if name == "static":
                report["compiled_top_kernels"] = top_kernels(run, 20)

        if "static" in variants:
            timed_compile("static", torch.compile(dd, mode="reduce-overhead", dynamic=False), b)
        if "dynamic" in variants:
            torch._dynamo.reset()
            timed_compile("dynamic", torch.compile(dd, mode="reduce-overhead"), 2)
        if "te_compiled" in variants:
            from pipeline.diffusion.graphs import GraphedCall

            ids, _ = text.host_inputs(tokens)
            t0 = time.time()
            compiled_forward = torch.compile(text.forward, mode="default", dynamic=False)
            g = GraphedCall(compiled_forward, [frames, ids])
            report["te_compiled_compile_s"] = round(time.time() - t0, 1)
            report["te_compiled_graphed_ms"] = round(cuda_ms(lambda: g(frames, ids)), 3)
            diff = (g(frames, ids).float() - text.forward(frames, ids).float()).abs().max().item()
            report["te_compiled_max_diff"] = diff
            print("te_compiled", report["te_compiled_graphed_ms"], report["te_compiled_compile_s"], diff, flush=True)
        if "cdt" in variants:
            torch._dynamo.reset()
            import torch._inductor.config as inductor_config

            inductor_config.coordinate_descent_tuning = True
            timed_compile("static_cdt", torch.compile(dd, mode="reduce-overhead", dynamic=False), b)
            inductor_config.coordinate_descent_tuning = False
        if "vae" in variants:
            cvae = torch.compile(c.vae.encoder, mode="default", dynamic=False)
            t0 = time.time()
            cvae(x)
            report["vae_encoder_compile_s"] = round(time.time() - t0, 1)
            report["compiled_vae_encoder_ms"] = round(cuda_ms(lambda: cvae(x)), 3)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
