"""Every GPU-only check of the diffusion engine's speed and stream paths, in one command
(about 3 minutes on an H200, full-size random weights):

    python -m bench.gpu_check [--reference ../shared/reference] [--out gpu_check.json]

Prints one `PASS|FAIL|INFO name: detail` line per check and writes all numbers as JSON.
A child process compiles the production graph (bucket 8, in a fresh compile-cache
directory) while this process runs the quick checks; a second child then starts the
same configuration from that cache (the warm-up a restarted server pays).

Checks: text encoder fast path = full template (bf16) and its timing; stream stress
check (and, INFO, the pre-fix order, expected to fail); stream priorities; blocking
event waits (no spinning core); out-of-memory recovery; compiled UNet path with every
switch = the bf16 eager reference (<= 1 uint8 level mean, <= MAX_LEVELS max); no host
syncs in a compiled step; first vs cached warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.provenance import git_state

MAX_LEVELS = 16
"""Largest per-pixel uint8 difference allowed against the bf16 reference (random
weights amplify bf16 rounding in a few pixels; the mean must stay <= 1 level)."""
CHECK_BUCKET = 8
OPTIMISED: dict[str, Any] = {"fuse_qkv": True}
"""Switches that are off by default, verified here on top of the defaults."""

REPO = Path(__file__).resolve().parent.parent
results: dict[str, Any] = {}
SMOKE = {"on": False}
"""--smoke: the same checks on CPU with the tiny components (CI runs the script's logic;
GPU-only measurements are skipped)."""


def dev() -> torch.device:
    return torch.device("cpu" if SMOKE["on"] else "cuda")


def dtype() -> torch.dtype:
    return torch.float32 if SMOKE["on"] else torch.bfloat16


def report(status: str, name: str, detail: str, **numbers: Any) -> None:
    print(f"{status} {name}: {detail}", flush=True)
    results[name] = {"status": status, "detail": detail, **numbers}


def check(name: str, fn: Callable[[], None]) -> None:
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others
        traceback.print_exc()
        report("FAIL", name, f"raised {type(exc).__name__}: {str(exc)[:300]}")
    results.setdefault(name, {})["seconds"] = round(time.monotonic() - t0, 1)


def cuda_ms(fn: Callable[[], Any], iters: int = 10) -> float:
    if SMOKE["on"]:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def components(reference: Path) -> Any:
    from pipeline.diffusion.loading import build_reference_sized, load_components

    if SMOKE["on"]:
        return load_components("tiny", None, dev(), dtype())
    return build_reference_sized(dev(), dtype(), reference)


def make_backend(c: Any, max_batch: int, **settings: Any) -> Any:
    from pipeline.config import DiffusionConfig
    from pipeline.diffusion.backend import DiffusionBackend
    from pipeline.messages import EngineInfo

    info = EngineInfo("diffusion", "random", "gpu check", 512, max_batch, 500)
    return DiffusionBackend(c, info=info, config=DiffusionConfig(**settings), device=dev())


def frames_of(clip: list[np.ndarray], sid: str, n: int) -> list[Any]:
    from pipeline.messages import FrameIn

    return [FrameIn(sid, clip[i % len(clip)], i, Fraction(1, 90000), time.monotonic()) for i in range(n)]


def test_frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512]
    base = np.stack([x / 2, y / 2, (x + y) / 4], -1)
    return [np.clip(base + rng.integers(0, 60, base.shape), 0, 255).astype(np.uint8) for _ in range(8)]


# ---- checks in this process --------------------------------------------------------------------


def check_text(c: Any) -> None:
    from pipeline.diffusion.text import SYSTEM_PREFIX_TOKENS, TextConditioner

    def conditioner(**fast: Any) -> TextConditioner:
        return TextConditioner(c.text_encoder, c.tokenizer, image_size=256, text_tokens=256, device=dev(), **fast)

    plain, fast = conditioner(), conditioner(length_step=32, prefix_cache=True)
    frames = torch.from_numpy(np.stack(test_frames())).to(dev()).permute(0, 3, 1, 2).float()
    tokens = [fast.tokens("oil painting, vibrant colors")] * 8
    ids_plain, _ = plain.host_inputs(tokens)
    ids_fast, _ = fast.host_inputs(tokens)
    g_plain = graphed(plain.forward, [frames, ids_plain])
    g_fast = graphed(fast.forward, [frames, ids_fast])
    n = tokens[0].length - SYSTEM_PREFIX_TOKENS
    # The yardstick: the full template in float32. bf16 rounding alone moves the stock path
    # by some amount; the fast path passes when it stays within that noise floor.
    exact = copy.deepcopy(c.text_encoder).float()
    with torch.inference_mode():
        want = (
            TextConditioner(exact.float(), c.tokenizer, image_size=256, text_tokens=256, device=dev())
            .forward(frames, ids_plain)[:, :n]
            .float()
        )
    del exact
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    def rel(x: torch.Tensor) -> tuple[float, float]:
        d = (x[:, :n].float() - want).abs()
        return float(d.mean()) / float(want.abs().mean()), float(d.max()) / float(want.abs().max())

    floor, _ = rel(g_plain(frames, ids_plain))
    mean_err, max_err = rel(g_fast(frames, ids_fast))
    limit = 1.25 * floor + 1e-3
    ms_plain = cuda_ms(lambda: g_plain(frames, ids_plain))
    ms_fast = cuda_ms(lambda: g_fast(frames, ids_fast))
    report(
        "PASS" if mean_err <= limit else "FAIL",
        "text_fast_path",
        f"B=8 graph {ms_plain:.2f} -> {ms_fast:.2f} ms (length {ids_plain.shape[1]} -> {ids_fast.shape[1]}, "
        f"prefix cached); mean rel err vs the float32 full template {mean_err:.4f} (stock bf16 path: "
        f"{floor:.4f}; limit 1.25x that + 0.001), max rel {max_err:.4f}",
        ms_full=round(ms_plain, 3),
        ms_fast=round(ms_fast, 3),
        mean_rel_err=mean_err,
        bf16_floor=floor,
        max_rel_err=max_err,
    )
    t0 = time.monotonic()
    compiled = conditioner(length_step=32, prefix_cache=True, compile_lm=not SMOKE["on"])
    g_comp = graphed(compiled.forward, [frames, ids_fast])
    compile_s = time.monotonic() - t0
    used = compiled.prefix is not None and (compiled.prefix.compiled or SMOKE["on"])
    comp_err, _ = rel(g_comp(frames, ids_fast).float())
    ms_comp = cuda_ms(lambda: g_comp(frames, ids_fast))
    report(
        "PASS" if used and comp_err <= limit else "FAIL",
        "text_compile",
        f"compiled decoder layer {'used' if used else 'FELL BACK to eager'}: B=8 graph {ms_comp:.2f} ms, "
        f"compile+capture {compile_s:.0f} s, mean rel err vs the float32 full template {comp_err:.4f} "
        f"(limit {limit:.4f})",
        ms=round(ms_comp, 3),
        compile_s=round(compile_s, 1),
        mean_rel_err=comp_err,
    )


def graphed(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
    from pipeline.diffusion.graphs import GraphedCall

    return fn if SMOKE["on"] else GraphedCall(fn, inputs)


RACE_WINDOW_CYCLES = 2_000_000
"""About 1 ms of side-stream idle on an H200: far longer than the text stream needs to
start, so the pre-fix order reads rows before they are gathered."""


def check_streams(c: Any) -> Any:
    from bench.stream_check import run_stream_check, stress_config

    settings = {k: v for k, v in stress_config().__dict__.items()}
    settings["buckets"] = (4, 8)
    if SMOKE["on"]:
        settings.update(text_image_size=256, text_tokens=256)
    b = make_backend(c, 8, **settings)
    sessions, steps = (3, 3) if SMOKE["on"] else (8, 40)
    fixed = run_stream_check(b, sessions=sessions, steps=steps, legacy_order=False)
    report(
        "PASS" if fixed["passed"] else "FAIL",
        "stream_check",
        f"{fixed['rows_checked']} refreshes of {sessions} flat-colour sessions, {fixed['mismatched_rows']} wrong "
        f"(worst rel err {fixed['worst_rel_err']}, min margin {fixed['min_margin']}), {fixed['seconds']} s",
        **fixed,
    )
    legacy = run_stream_check(b, sessions=sessions, steps=steps, legacy_order=True)
    report(
        "INFO",
        "stream_check_legacy_order",
        f"pre-fix order: {legacy['mismatched_rows']} of {legacy['rows_checked']} wrong "
        f"({'reproduces the race' if not legacy['passed'] else 'race not hit this run'})",
        **legacy,
    )
    if b.cuda:  # the same with the race window widened: the check must tell the orders apart
        window = RACE_WINDOW_CYCLES
        wide_fixed = run_stream_check(b, sessions, steps, legacy_order=False, race_window_cycles=window)
        wide_legacy = run_stream_check(b, sessions, steps, legacy_order=True, race_window_cycles=window)
        ok = wide_fixed["passed"] and not wide_legacy["passed"]
        report(
            "PASS" if ok else "FAIL",
            "stream_check_widened",
            f"side stream idles {window} cycles before each gather: fixed order "
            f"{wide_fixed['mismatched_rows']}/{wide_fixed['rows_checked']} wrong, pre-fix order "
            f"{wide_legacy['mismatched_rows']}/{wide_legacy['rows_checked']} wrong (must be > 0)",
            fixed=wide_fixed,
            legacy=wide_legacy,
        )
    priorities = b.streams.priorities()
    if priorities is None:
        return b
    ok = priorities["main"] < priorities["side"] and priorities["main"] < priorities["text"]
    report("PASS" if ok else "FAIL", "stream_priorities", f"{priorities} (lower = more urgent)", **priorities)
    return b


def check_blocking_wait() -> None:
    if SMOKE["on"]:
        return
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    rows = {}
    for blocking in (True, False):
        torch.cuda.synchronize()
        for _ in range(40):
            x @ x  # ~30 ms of GPU work per 40 products
        event = torch.cuda.Event(blocking=blocking)
        event.record()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        event.synchronize()
        rows[blocking] = (time.perf_counter() - wall0, time.process_time() - cpu0)
    (wall, cpu), (wall_spin, cpu_spin) = rows[True], rows[False]
    ok = cpu < 0.5 * wall
    report(
        "PASS" if ok else "FAIL",
        "blocking_event_wait",
        f"blocking event: {cpu * 1000:.1f} ms CPU in {wall * 1000:.1f} ms wait; spinning event (old): "
        f"{cpu_spin * 1000:.1f} ms CPU in {wall_spin * 1000:.1f} ms",
        cpu_s=cpu,
        wall_s=wall,
        spin_cpu_s=cpu_spin,
    )


def check_recover(b: Any) -> None:
    clip = test_frames()
    b.open_session("oom", "oil painting")
    try:
        with b.denoise.eager_only():
            b.collect(b.submit(frames_of(clip, "oom", 1)))
            try:
                if SMOKE["on"]:
                    raise torch.cuda.OutOfMemoryError("smoke test")
                torch.empty(10**13, dtype=torch.uint8, device=dev())  # ~9 TB: a real CUDA OOM
                raise AssertionError("no out-of-memory error")
            except torch.cuda.OutOfMemoryError as exc:
                recovered = b.recover(exc)
            out = b.collect(b.submit(frames_of(clip, "oom", 1)))
    finally:
        b.close_session("oom")
    ok = recovered and len(out) == 1 and out[0].shape == (512, 512, 3)
    report("PASS" if ok else "FAIL", "oom_recover", f"recover() -> {recovered}, next step made {len(out)} frame")


# ---- the compiling children ----------------------------------------------------------------------


def child(kind: str, reference: Path, cache: Path, out: Path, buckets: tuple[int, ...]) -> None:
    """first: plain bf16 reference, then the production graph (defaults + OPTIMISED) compiled
    into `cache`; second: the same start from the cache. Writes its numbers to `out`."""
    from pipeline.diffusion.schedule import FlowSchedule
    from pipeline.diffusion.stages import DenoiseDecode, encode_reference

    t_start = time.monotonic()
    c = components(reference)
    data: dict[str, Any] = {"build_s": round(time.monotonic() - t_start, 1)}
    b_max = max(buckets)
    gen = torch.Generator().manual_seed(0)
    # Inference tensors, as the engine's steps make them: a stored graph (compile=precompile)
    # guards on the dispatch keys and refuses ordinary tensors instead of recompiling.
    with torch.inference_mode():
        frames = torch.from_numpy(np.stack(test_frames()[:1] * b_max)).to(dev()).permute(0, 3, 1, 2).float()
        noise = torch.randn(b_max, 4, 64, 64, generator=gen).to(dev(), dtype())
        cond = torch.randn(b_max, 192, c.text_encoder.config.text_config.hidden_size, generator=gen) * 3
        cond, mask = cond.to(dev(), dtype()), torch.ones(b_max, 192, dtype=torch.long, device=dev())
        mask[:, 120:] = 0
        latents = encode_reference(c.vae, frames)
        schedule = FlowSchedule.from_scheduler(c.scheduler, 1, 64, 64)
        want = DenoiseDecode(c.unet, c.vae, schedule, 512)(noise, latents, cond, mask).cpu().numpy()
    settings = {**OPTIMISED, "buckets": buckets, "compile_cache_dir": str(cache)}
    b = make_backend(c, b_max, **settings)
    progress: list[str] = []
    t0 = time.monotonic()
    b.warmup(lambda m: (progress.append(f"{time.monotonic() - t0:.1f}s {m}"), print(f"  [{kind}] {m}", flush=True)))
    # A stored mode (precompile, aot) keeps no mega-cache entry: its files loaded when no bucket was built.
    stored = b.denoise.aot is not None and not b.denoise.aot.built
    data.update(warmup_s=round(time.monotonic() - t0, 1), progress=progress)
    data["cache_loaded"] = b.compile_cache.loaded or stored
    data["start_to_ready_s"] = round(time.monotonic() - t_start, 1)
    with torch.inference_mode():  # the graph was compiled for the production layout (strides are guarded)
        if not b.reference_encoder(frames).is_contiguous():
            latents = latents.contiguous(memory_format=torch.channels_last)
    if b.cuda:
        torch.cuda.synchronize()
    with torch.inference_mode(), b.streams.on_main():  # the stream the graph was recorded for
        with b.denoise.eager_only():
            eager = b.denoise(noise, latents, cond, mask).cpu().numpy()
        got = b.denoise(noise, latents, cond, mask).cpu().numpy()
    for name, img in (("rewrites_eager", eager), ("compiled", got)):
        diff = np.abs(img.astype(np.int16) - want.astype(np.int16))
        data[name] = {"mean": float(diff.mean()), "max": int(diff.max())}
    data.update(steady_state(b))
    b.close()
    out.write_text(json.dumps(data))


def steady_state(b: Any) -> dict[str, Any]:
    """Host syncs (sync debug mode) and engine-thread CPU per step, compiled graph, B=8."""
    import warnings

    clip = test_frames()
    b.open_session("steady", "oil painting")
    frames = frames_of(clip, "steady", max(b.buckets()))
    steps = 2 if SMOKE["on"] else 20
    for _ in range(1 if SMOKE["on"] else 3):
        b.collect(b.submit(frames))
    if b.cuda:
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if b.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ticket = None
            for _ in range(steps):
                nxt = b.submit(frames)
                if ticket is not None:
                    b.collect(ticket)
                ticket = nxt
            b.collect(ticket)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            if b.cuda:
                torch.cuda.set_sync_debug_mode(0)
    b.close_session("steady")
    # torch announces the debug mode itself with a warning that mentions synchronizing: not a sync.
    syncs = sorted(
        {
            str(w.message)[:160]
            for w in caught
            if "synchroniz" in str(w.message).lower() and "prototype feature" not in str(w.message)
        }
    )
    return {"syncs": syncs, "step_ms": round(wall / steps * 1000, 2), "cpu_ms_per_step": round(cpu / steps * 1000, 2)}


def run_child(kind: str, args: argparse.Namespace, cache: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_CACHE", "TRITON_CACHE"))}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--child", kind, "--reference", str(args.reference)]
    cmd += ["--cache", str(cache), "--child-out", str(out), "--buckets", args.buckets, "--fp8", args.fp8]
    cmd += ["--compile", args.compile] if args.compile else []
    cmd += ["--smoke"] if SMOKE["on"] else []
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The child's exit code, or None after killing it at its time limit (the lead's
    device command has 10 minutes in all)."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def report_children(first: dict[str, Any], second: dict[str, Any] | None, buckets: str) -> None:
    for name in ("rewrites_eager", "compiled"):
        d = first[name]
        ok = d["mean"] <= 1.0 and d["max"] <= MAX_LEVELS
        report(
            "PASS" if ok else "FAIL",
            f"unet_{name}_vs_bf16_reference",
            f"uint8 mean {d['mean']:.3f} (<= 1), max {d['max']} (<= {MAX_LEVELS}); switches: defaults + {OPTIMISED}",
            **d,
        )
    syncs = first["syncs"]
    report(
        "PASS" if not syncs else "FAIL",
        "no_host_syncs_in_step",
        f"{len(syncs)} kinds of sync in steady compiled steps {syncs[:3]}; engine thread "
        f"{first['cpu_ms_per_step']} ms CPU per {first['step_ms']} ms step",
        **{k: first[k] for k in ("syncs", "step_ms", "cpu_ms_per_step")},
    )
    if second is None:
        report("FAIL", "warmup_cached_start", "second start did not finish")
        return
    d = second["compiled"]  # the graph a restarted server runs (loaded, for a stored mode)
    ok = d["mean"] <= 1.0 and d["max"] <= MAX_LEVELS
    report(
        "PASS" if ok else "FAIL",
        "unet_cached_start_vs_bf16_reference",
        f"uint8 mean {d['mean']:.3f} (<= 1), max {d['max']} (<= {MAX_LEVELS}); the second start's graph",
        **d,
    )
    ok = second["cache_loaded"] and second["warmup_s"] < first["warmup_s"] / 2
    status = "INFO" if SMOKE["on"] else ("PASS" if ok else "FAIL")  # nothing compiles on CPU
    n = len(buckets.split(","))
    report(
        status,
        "warmup_cached_start",
        f"buckets {buckets}: first start warm-up {first['warmup_s']} s, cached {second['warmup_s']} s "
        f"(start to ready {second['start_to_ready_s']} s incl. model build {second['build_s']} s); "
        f"x5 buckets ~ {second['warmup_s'] * 5 / n:.0f} s (target <= 60)",
        first_s=first["warmup_s"],
        second_s=second["warmup_s"],
        second_progress=second["progress"],
        first_progress=first["progress"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--buckets", default=str(CHECK_BUCKET), help="buckets the children compile (default 8)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny components: the script's logic only (CI)")
    p.add_argument("--only", default="", help="comma-separated in-process checks to run (text, streams); no children")
    p.add_argument("--fp8", choices=("off", "linear"), default="off", help="also FP8 linear layers (--fp8 of serve)")
    p.add_argument(
        "--compile",
        choices=("reduce-overhead", "precompile", "aot"),
        help="the children's compile mode (default: the engine's); a stored mode's second child loads its files",
    )
    p.add_argument("--child", choices=("first", "second"), help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    buckets = tuple(int(x) for x in args.buckets.split(","))
    SMOKE["on"] = args.smoke
    if args.fp8 != "off":  # checked against the same bf16 reference as the other switches
        OPTIMISED["fp8"] = args.fp8
    if args.compile:
        OPTIMISED["compile"] = args.compile
    if args.child:
        child(args.child, args.reference, args.cache, args.child_out, buckets)
        return 0
    if not torch.cuda.is_available() and not args.smoke:
        print("FAIL gpu_check: no CUDA device")
        return 1
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="livestyle-gpu-check-"))
    first_out, second_out = work / "first.json", work / "second.json"
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only:
        c = components(args.reference)
        if "text" in only:
            check("text_fast_path", lambda: check_text(c))
        if "streams" in only:
            check("stream_check", lambda: check_streams(c).close())
        results["git"] = git_state()
        args.out.write_text(json.dumps(results, indent=1, default=str))
        failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "FAIL"]
        print(f"{'FAIL' if failed else 'PASS'} gpu_check --only {args.only}: {len(failed)} failed {failed}")
        return 1 if failed else 0
    first = run_child("first", args, work / "cache", first_out)
    c = components(args.reference)
    check("text_fast_path", lambda: check_text(c))
    holder: dict[str, Any] = {}
    check("stream_check", lambda: holder.setdefault("b", check_streams(c)))
    check("blocking_event_wait", check_blocking_wait)
    if "b" in holder:
        check("oom_recover", lambda: check_recover(holder["b"]))
        holder["b"].close()
    if args.fp8 == "off":
        report("INFO", "fp8", "not checked: run with --fp8 linear to check the FP8 layers against the bf16 reference")
    first_rc = wait(first, 420)
    second_data = None
    if first_rc == 0:
        second = run_child("second", args, work / "cache", second_out)
        if wait(second, 240) == 0:
            second_data = json.loads(second_out.read_text())
        check("children", lambda: report_children(json.loads(first_out.read_text()), second_data, args.buckets))
    else:
        report("FAIL", "children", f"first compile child exited {first_rc} (None: killed after its time limit)")
    results["total_s"] = round(time.monotonic() - t0, 1)
    results["git"] = git_state()
    results["gpu"] = None if args.smoke else torch.cuda.get_device_name()
    results["torch"] = torch.__version__
    args.out.write_text(json.dumps(results, indent=1, default=str))
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "FAIL"]
    print(f"{'FAIL' if failed else 'PASS'} gpu_check: {len(failed)} failed {failed} in {results['total_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
