"""`livestyle eval`: the metrics on real DAVIS clips (steady vs flickering vs blurred outputs,
scene cuts), the report's documented keys, and the command end to end (and its --sweep on
the tiny model)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import DAVIS_DIR, davis_clip

from evaluation.frames import Pair
from evaluation.metrics import pair_values
from evaluation.report import REPORT_KEYS, SUMMARY_KEYS, evaluate_pairs
from evaluation.sweep import trim
from server.cli import main

pytestmark = [pytest.mark.eval, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[1]
FRAMES = 12


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return davis_clip("blackswan")[:FRAMES]


def report_of(sources, outputs):
    return evaluate_pairs(Pair(i, s, o) for i, (s, o) in enumerate(zip(sources, outputs, strict=True)))


def colour_map(frame: np.ndarray) -> np.ndarray:
    """A fixed (frame-independent) stylization: a gamma curve and swapped channels."""
    lut = np.clip(255 * (np.arange(256) / 255) ** 0.6, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.LUT(frame, lut)[..., ::-1])


def random_recolour(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """A different colour transform on every frame: what flicker looks like."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in frames:
        gain, offset = rng.uniform(0.5, 1.5, 3), rng.uniform(-40, 40, 3)
        out.append(np.clip(frame * gain + offset, 0, 255).astype(np.uint8))
    return out


def test_steady_stylizations_score_near_the_floor_and_random_recolouring_far_above(clip):
    same = report_of(clip, clip)["summary"]
    mapped = report_of(clip, [colour_map(f) for f in clip])["summary"]
    noisy = report_of(clip, random_recolour(clip))
    print(f"\nwarp error / floor: same {same['warp_ratio']}, colour map {mapped['warp_ratio']}, ", end="")
    print(f"random {noisy['summary']['warp_ratio']} (floor {same['warp_floor']:.2f} levels)")
    assert same["warp_floor"] > 0.5  # real motion: the floor is not trivially zero
    assert same["warp_error"] == pytest.approx(same["warp_floor"])
    assert same["warp_ratio"] == pytest.approx(1.0) and same["flicker"] == 0.0
    assert mapped["warp_ratio"] < 1.3 and mapped["flicker"] < 1.0
    assert noisy["summary"]["warp_ratio"] > 5 and noisy["summary"]["flicker"] > 10
    assert any(flag.startswith("flickers") for flag in noisy["flags"])
    assert not any(flag.startswith("flickers") for flag in report_of(clip, clip)["flags"])
    assert same["ssim"] == pytest.approx(1.0) and same["hist_distance"] == pytest.approx(0.0, abs=1e-6)
    assert mapped["ssim"] < 0.95 and mapped["hist_distance"] > 0.3  # an edit, but a steady one


def test_a_blurred_output_is_flagged_by_sharpness(clip):
    blurred = report_of(clip, [cv2.GaussianBlur(f, (0, 0), 3) for f in clip])
    s = blurred["summary"]
    print(f"\nblurred: warp/floor {s['warp_ratio']:.2f}, Sobel ratio {s['sobel_ratio']:.2f}, HF {s['hf_ratio']:.3f}")
    assert s["warp_ratio"] < 1.0  # steadier than the input: exactly what sharpness must expose
    assert s["sobel_ratio"] < 0.7 and s["hf_ratio"] < 0.5
    assert any(flag.startswith("blurrier") for flag in blurred["flags"])
    assert not any(flag.startswith("blurrier") for flag in report_of(clip, clip)["flags"])


def test_pairs_across_a_scene_cut_are_skipped_and_the_cut_is_reported(clip):
    other = davis_clip("camel")[:6]
    spliced = clip[:6] + other
    report = report_of(spliced, spliced)
    assert report["cuts"] == [6]
    assert report["skipped_pairs"] == [[5, 6]]
    assert report["per_frame"]["warp_error"][6] is None and report["per_frame"]["warp_error"][0] is None
    assert report["summary"]["pairs_used"] == len(spliced) - 2
    # Not skipped, the pair across the cut would dominate the mean: the skip is what keeps it honest.
    across = pair_values(spliced[5], spliced[6], spliced[5], spliced[6])["warp_error"]
    assert across > 5 * report["summary"]["warp_error"]


def test_perceptual_scores_are_skipped_when_their_weights_are_not_local(clip, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    report = report_of(clip[:3], clip[:3])
    for name in ("lpips", "clip"):
        assert report["perceptual"][name]["available"] is False
        assert report["perceptual"][name]["reason"]
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


@pytest.fixture(scope="module")
def short_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A 12-frame DAVIS clip and its preview-engine stylization, through `livestyle stylize`."""
    folder = tmp_path_factory.mktemp("eval")
    source = trim(DAVIS_DIR / "goat.mp4", folder / "goat.mp4", FRAMES)
    stylized = folder / "goat-oil.mp4"
    assert main(["stylize", str(source), str(stylized), "--prompt", "oil painting", "--engine", "preview"]) == 0
    return source, stylized


def test_eval_end_to_end_writes_the_table_json_and_plot(short_pair, tmp_path, capsys):
    source, stylized = short_pair
    out = tmp_path / "report"
    assert main(["eval", str(source), str(stylized), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for label in ("warp error, output", "warp error, input = floor", "Sobel", "SSIM", "scene cuts at frames: none"):
        assert label in table
    assert re.search(r"lpips: (skipped: .+|\d\.\d{3} over \d+ frames)", table)
    report = json.loads((out / "eval.json").read_text())
    assert tuple(report) == REPORT_KEYS and tuple(report["summary"]) == SUMMARY_KEYS
    assert report["frames"] == FRAMES and report["input_frames"] == FRAMES and report["size"] == [512, 512]
    assert all(len(values) == FRAMES for values in report["per_frame"].values())
    assert report["summary"]["warp_error"] > 0 and 0 < report["summary"]["ssim"] < 1
    png = (out / "per_frame.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_report_keys_are_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Evaluating a stylized video") :]
    section = section[: section.index("\n## ", 3)]
    missing = [key for key in (*REPORT_KEYS, *SUMMARY_KEYS) if f"`{key}`" not in section]
    assert not missing, f"README's eval section does not document {missing}"
    assert (ROOT / "docs" / "eval-per-frame.png").stat().st_size < 150_000


def test_eval_runs_without_torch(short_pair, tmp_path):
    source, stylized = short_pair
    # torch unimportable: the metrics and plots must not need it (the learned scores say why they skip).
    code = (
        "import sys; sys.modules['torch'] = None; from server.cli import main; "
        f"sys.exit(main(['eval', {str(source)!r}, {str(stylized)!r}, '--out', {str(tmp_path / 'r')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warp error" in done.stdout and "lpips: skipped" in done.stdout
    assert (tmp_path / "r" / "eval.json").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.mp4", "{s}"], "INPUT video missing.mp4 does not exist"),
        (["{i}"], "give the stylized video to compare"),
        (["{i}", "{s}", "--model", "tiny"], "--model: used only with --sweep"),
        (["{i}", "{s}", "--sweep", "--prompt", "x"], "with --sweep give INPUT only"),
        (["{i}", "--sweep"], "--sweep needs a style: add --prompt"),
        (["{i}", "--sweep", "--prompt", "x", "--grid", "colour=1,2"], "--grid 'colour=1,2' is not NAME=V1,V2"),
        (["{i}", "--sweep", "--prompt", "x", "--grid", "text-refresh=0,8"], "--grid text-refresh=0: text_refresh 0"),
        (["{i}", "{s}", "--max-frames", "1"], "--max-frames 1 is not allowed; use 2 or more"),
        (["{i}", "{s}", "--out", "/nonexistent/x/y"], "for --out does not exist; create it first"),
    ],
)
def test_eval_arguments_are_checked_before_any_work(short_pair, tmp_path, capsys, args, expected):
    source, stylized = short_pair
    argv = [a.format(i=source, s=stylized) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "report")]
    assert main(["eval", *argv]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "report").exists()  # refused before anything was written


@pytest.mark.diffusion
def test_sweep_runs_the_engine_over_a_grid_with_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["eval", str(DAVIS_DIR / "goat.mp4"), "--sweep", "--model", "tiny", "--max-batch", "2"]
    argv += ["--prompt", "oil painting", "--grid", "text-refresh=1,8", "--max-frames", "2", "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "text-refresh=1" in table and "text-refresh=8" in table
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["label"] for row in sweep["rows"]] == ["text-refresh=1", "text-refresh=8"]
    for row in sweep["rows"]:
        print(f"\n{row['label']}: {row['fps']:.2f} fps (tiny model, CPU), warp/floor {row['summary']['warp_ratio']}")
        assert row["engine"] == "diffusion" and row["frames"] == 2 and row["fps"] > 0
        assert tuple(row["summary"]) == SUMMARY_KEYS and Path(row["video"]).is_file()
        assert json.loads(Path(row["report"]).read_text())["frames"] == 2
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
