"""PNG plots (matplotlib, headless Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (
    ("warp error (levels)", (("warp_error", "output"), ("warp_floor", "input = floor"))),
    ("flicker beyond motion (levels)", (("flicker", "output"),)),
    ("sharpness output/input", (("sobel_ratio", "Sobel"), ("hf_ratio", "high-frequency energy"))),
    ("edit strength", (("ssim", "SSIM to input"), ("hist_distance", "colour-histogram distance"))),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_frame(report: dict[str, Any], path: Path) -> Path:
    """Each metric frame by frame, scene cuts as dashed vertical lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(7.5, 7.2), sharex=True, dpi=80)
    frames = range(report["frames"])
    for ax, (title, series) in zip(axes, PANELS, strict=True):
        for key, label in series:
            values = [float("nan") if v is None else v for v in report["per_frame"][key]]
            ax.plot(frames, values, label=label, linewidth=1.2)
        for cut in report["cuts"]:
            ax.axvline(cut, color="red", linestyle="--", linewidth=0.9)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("frame (red dashes: scene cuts, pairs across them skipped)", fontsize=8)
    fig.suptitle(Path(report["stylized"]).name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    """Quality against fps, one point per setting: warp error over its floor (lower = steadier)
    and SSIM to the input (lower = stronger edit)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=80)
    for ax, (key, label) in zip(axes, (("warp_ratio", "warp error / floor"), ("ssim", "SSIM to input")), strict=True):
        for row in rows:
            value = row["summary"][key]
            if value is None:
                continue
            ax.scatter(row["fps"], value, s=25)
            ax.annotate(row["label"], (row["fps"], value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("fps (file mode, warm-up excluded)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
