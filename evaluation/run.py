"""What `livestyle eval` does once its arguments are checked (server/cli.py calls `run`)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from evaluation import plots
from evaluation.config import EvalConfig
from evaluation.report import evaluate, format_table, write_json

log = logging.getLogger("livestyle.eval")


def run(config: EvalConfig) -> str:
    """Write the report files into config.out_dir; returns the terminal table."""
    config.out_dir.mkdir(exist_ok=True)
    if config.sweep:
        return _sweep(config)
    assert config.stylized is not None
    report = evaluate(config.input, config.stylized, max_frames=config.max_frames, cut_threshold=config.cut_threshold)
    paths = [
        write_json(report, config.out_dir / "eval.json"),
        plots.per_frame(report, config.out_dir / "per_frame.png"),
    ]
    log.info("wrote %s", ", ".join(map(str, paths)))
    return format_table(report)


def _slug(label: str) -> str:
    """A file name for a setting's label: "text-refresh=1 seed=2" -> "text-refresh_1_seed_2"."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label)


def _sweep(config: EvalConfig) -> str:
    from tqdm import tqdm

    from evaluation.sweep import trim
    from pipeline.engines import resolve_engine
    from pipeline.video_file import stylize_file

    # Every setting's engine resolves (model, device, stack) before the first one runs.
    specs = [(label, resolve_engine(engine)) for label, engine in config.sweep]
    if specs[0][1].info.kind == "preview":
        log.warning("the preview engine ignores the grid's settings: every run stylizes alike (--engine diffusion)")
    source = config.input
    if config.max_frames is not None:
        source = trim(config.input, config.out_dir / "input.mp4", config.max_frames)
    rows: list[dict[str, Any]] = []
    with tqdm(total=None, unit="frame", desc="sweep", dynamic_ncols=True) as bar:
        for label, spec in specs:
            bar.set_description(f"sweep {label}")
            video = config.out_dir / f"{_slug(label)}.mp4"
            done = bar.n

            def advance(n: int, done: int = done) -> None:
                bar.update(done + n - bar.n)

            def total(n: int | None) -> None:
                if n and bar.total is None:
                    bar.total = n * len(specs)
                    bar.refresh()

            result = stylize_file(
                spec,
                source,
                video,
                config.prompt,
                on_progress=advance,
                total_hint=total,
            )
            report = evaluate(source, video, cut_threshold=config.cut_threshold)
            report_path = write_json(report, config.out_dir / f"{_slug(label)}.json")
            rows.append(
                {
                    "label": label,
                    "engine": spec.info.kind,
                    "fps": round(result.fps, 3),
                    "frames": result.frames,
                    "seconds": round(result.seconds, 3),
                    "video": str(video),
                    "report": str(report_path),
                    "summary": report["summary"],
                }
            )
            log.info(
                "%s: %d frames, %.1f fps, warp error %s",
                label,
                result.frames,
                result.fps,
                report["summary"]["warp_error"],
            )
    sweep = {"input": str(source), "prompt": config.prompt, "rows": rows}
    (config.out_dir / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")
    plots.sweep(rows, config.out_dir / "sweep.png")
    log.info("wrote %s and %s", config.out_dir / "sweep.json", config.out_dir / "sweep.png")
    return format_sweep(rows)


def format_sweep(rows: list[dict[str, Any]]) -> str:
    width = max(len("setting"), *(len(r["label"]) for r in rows))
    lines = [f"{'setting':<{width}}  {'fps':>8}  {'warp/floor':>10}  {'flicker':>8}  {'sobel':>6}  {'ssim':>6}"]
    for r in rows:
        s = r["summary"]
        cells = [f"{s[k]:.3f}" if s[k] is not None else "n/a" for k in ("warp_ratio", "flicker", "sobel_ratio", "ssim")]
        lines.append(
            f"{r['label']:<{width}}  {r['fps']:8.2f}  {cells[0]:>10}  {cells[1]:>8}  {cells[2]:>6}  {cells[3]:>6}"
        )
    return "\n".join(lines)
