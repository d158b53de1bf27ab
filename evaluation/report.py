"""`livestyle eval INPUT STYLIZED`: every metric frame by frame, the summary, the flags, the
terminal table and the JSON. The documented JSON keys are REPORT_KEYS / SUMMARY_KEYS."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import perceptual
from evaluation.cuts import CutTracker
from evaluation.frames import Pair, frame_count, pairs
from evaluation.metrics import frame_values, pair_values

VERSION = 1
PAIR_KEYS = ("warp_error", "warp_floor", "valid_fraction", "flicker")
"""Per-frame values of the pair (frame t-1, frame t), stored at t; null at 0 and across cuts."""
FRAME_KEYS = ("sobel_ratio", "hf_ratio", "ssim", "hist_distance")
SUMMARY_KEYS = (*PAIR_KEYS, "warp_excess", "warp_ratio", *FRAME_KEYS, "pairs_used")
REPORT_KEYS = (
    "version", "input", "stylized", "frames", "input_frames", "stylized_frames", "size",
    "cut_threshold", "cuts", "skipped_pairs", "per_frame", "summary", "perceptual", "flags",
)  # fmt: skip
BLURRY_SOBEL = 0.7
"""Sobel ratio below which the output counts as blurrier than its input."""
BLURRY_HF = 0.5
"""High-frequency energy ratio below which the output counts as blurrier than its input."""
FLICKERY = 2.0
"""Warp error over the input's floor above which the output counts as flickering."""


def _clean(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return _clean(float(np.mean(kept))) if kept else None


def evaluate(
    source: Path,
    stylized: Path,
    *,
    max_frames: int | None = None,
    cut_threshold: float = 0.3,
    on_frame: Callable[[int], None] = lambda _n: None,
) -> dict[str, Any]:
    """The report of the video `stylized` against its input video `source` (see REPORT_KEYS)."""
    counts = frame_count(source), frame_count(stylized)
    known = [c for c in (*counts, max_frames) if c]
    return evaluate_pairs(
        pairs(source, stylized, max_frames),
        names=(str(source), str(stylized)),
        counts=counts,
        expected=min(known) if known else None,
        cut_threshold=cut_threshold,
        on_frame=on_frame,
    )


def evaluate_pairs(
    stream: Iterable[Pair],
    *,
    names: tuple[str, str] = ("input", "stylized"),
    counts: tuple[int | None, int | None] = (None, None),
    expected: int | None = None,
    cut_threshold: float = 0.3,
    on_frame: Callable[[int], None] = lambda _n: None,
) -> dict[str, Any]:
    """The report of aligned (input, output) frame pairs in order; `expected` (the frame count,
    when known) spreads the frames the learned scores look at over the whole video."""
    tracker = CutTracker(cut_threshold)
    per_frame: dict[str, list[float | None]] = {k: [] for k in (*PAIR_KEYS, *FRAME_KEYS)}
    skipped: list[list[int]] = []
    available = perceptual.availability()
    stride = max(1, math.ceil(expected / perceptual.MAX_FRAMES)) if expected else 1
    kept: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    previous: Pair | None = None
    size: list[int] = []
    for pair in stream:
        cut = tracker.update(pair.index, pair.source)
        values: dict[str, float | None] = dict.fromkeys(PAIR_KEYS)
        if previous is not None and cut:
            skipped.append([previous.index, pair.index])
        elif previous is not None:
            values.update(pair_values(previous.source, pair.source, previous.output, pair.output))
        values.update(frame_values(pair.source, pair.output))
        for key, column in per_frame.items():
            column.append(_clean(values[key]))
        if None in available.values() and pair.index % stride == 0 and len(kept[0]) < perceptual.MAX_FRAMES:
            kept[0].append(pair.source)
            kept[1].append(pair.output)
        size = list(pair.output.shape[:2])
        previous = pair
        on_frame(pair.index + 1)
    frames = len(per_frame["ssim"])
    if frames < 2:
        raise ValueError(f"{names[1]} and {names[0]} have {frames} frame(s) to compare; at least 2 are needed")
    report: dict[str, Any] = {
        "version": VERSION,
        "input": names[0],
        "stylized": names[1],
        "frames": frames,
        "input_frames": counts[0],
        "stylized_frames": counts[1],
        "size": size,
        "cut_threshold": cut_threshold,
        "cuts": tracker.cuts,
        "skipped_pairs": skipped,
        "per_frame": per_frame,
        "summary": summarize(per_frame),
        "perceptual": perceptual.scores(available, *kept),
    }
    report["flags"] = flags(report)
    return report


def summarize(per_frame: dict[str, list[float | None]]) -> dict[str, Any]:
    summary: dict[str, Any] = {key: _mean(per_frame[key]) for key in (*PAIR_KEYS, *FRAME_KEYS)}
    error, floor = summary["warp_error"], summary["warp_floor"]
    both = error is not None and floor is not None
    summary["warp_excess"] = _clean(error - floor) if both else None
    summary["warp_ratio"] = _clean(error / floor) if both and floor > 1e-9 else None
    summary["pairs_used"] = sum(v is not None for v in per_frame["warp_error"])
    return {key: summary[key] for key in SUMMARY_KEYS}


def flags(report: dict[str, Any]) -> list[str]:
    """Plain-language warnings: blurrier than the input, flickering, too few pairs, length mismatch."""
    s, out = report["summary"], []
    sobel, hf = s["sobel_ratio"], s["hf_ratio"]
    if (sobel is not None and sobel < BLURRY_SOBEL) or (hf is not None and hf < BLURRY_HF):
        out.append(
            f"blurrier than the input: Sobel ratio {_shown(sobel)} (flag below {BLURRY_SOBEL}), high-frequency "
            f"ratio {_shown(hf)} (flag below {BLURRY_HF}); a low warp error may only mean less detail"
        )
    if s["warp_ratio"] is not None and s["warp_ratio"] > FLICKERY:
        errors = report["per_frame"]["warp_error"]
        worst = sorted((i for i, v in enumerate(errors) if v is not None), key=lambda i: -errors[i])[:3]
        out.append(
            f"flickers: warp error {s['warp_error']:.2f} is {s['warp_ratio']:.1f}x the input's floor "
            f"{s['warp_floor']:.2f}; worst frames {', '.join(map(str, worst))}"
        )
    if s["pairs_used"] == 0:
        out.append("no frame pair to compare: every pair crosses a scene cut")
    counts = report["input_frames"], report["stylized_frames"]
    if all(counts) and counts[0] != counts[1]:
        out.append(
            f"the input has {counts[0]} frames, the stylized video {counts[1]}; compared the first {report['frames']}"
        )
    return out


ROWS = (
    ("warp_error", "warp error, output (levels, occlusions masked)"),
    ("warp_floor", "warp error, input = floor (levels)"),
    ("warp_ratio", "warp error / floor"),
    ("flicker", "flicker beyond the input's motion (levels)"),
    ("valid_fraction", "pixels with trusted flow"),
    ("sobel_ratio", "sharpness: Sobel output/input"),
    ("hf_ratio", "sharpness: high-frequency energy output/input"),
    ("ssim", "edit: SSIM to the input (1 = same)"),
    ("hist_distance", "edit: colour-histogram distance (0 = same)"),
)


def format_table(report: dict[str, Any]) -> str:
    s = report["summary"]
    width = max(len(label) for _, label in ROWS)
    lines = [f"{report['stylized']} vs {report['input']}: {report['frames']} frames, {s['pairs_used']} pairs"]
    lines.append(f"{'metric':<{width}}  {'mean':>9}")
    for key, label in ROWS:
        value = s[key]
        lines.append(f"{label:<{width}}  {'n/a' if value is None else f'{value:9.3f}':>9}")
    cuts = ", ".join(map(str, report["cuts"])) or "none"
    lines.append(f"scene cuts at frames: {cuts} ({len(report['skipped_pairs'])} pairs skipped)")
    for name, score in report["perceptual"].items():
        shown = (
            f"{score['mean']:.3f} over {score['frames']} frames"
            if score["available"]
            else f"skipped: {score['reason']}"
        )
        lines.append(f"{name}: {shown}")
    lines += [f"FLAG: {flag}" for flag in report["flags"]]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return path
