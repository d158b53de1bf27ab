"""`livestyle bench` smoke run on the tiny model (CPU): the harness keeps working. The
real measurements need a GPU (docs/performance.md)."""

import json

import pytest
from media import DAVIS_DIR

from server.cli import main

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(600)]


def test_bench_runs_every_scenario_on_the_tiny_model(tmp_path):
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--davis-dir",
            str(DAVIS_DIR),
            "--out-dir",
            str(tmp_path),
            "--frames",
            "8",
            "--batches",
            "1,4",
            "--sessions",
            "1,2",
            "--buckets",
            "1,4,8",
            "--live-seconds",
            "1",
            "--naive-frames",
            "2",
            "--tag",
            "smoke",
            "--scenarios",
            "naive,paper,cached_prompt,components,serial,interactive,sessions",
        ]
    )
    assert code == 0
    (path,) = tmp_path.glob("*-cpu-smoke.json")
    report = json.loads(path.read_text())
    summary = report["summary"]
    for key in (
        "gpu",
        "paper_b8_fps",
        "cached_prompt_b8_fps",
        "naive_fps",
        "speedup_vs_naive",
        "interactive_p50_ms",
        "interactive_p99_ms",
        "max_sessions_at_30fps",
        "many_sessions_p50_ms",
    ):
        assert key in summary
    assert summary["gpu"] == "cpu" and summary["naive_fps"] > 0
    scenarios = report["scenarios"]
    assert [r["B"] for r in scenarios["paper"]] == [1, 4, 8]  # 8 added for the component breakdown
    assert scenarios["cached_prompt"][0]["fps"] > 0 and scenarios["paper_serial"][0]["fps"] > 0
    assert set(scenarios["components"]["stage_ms_mean"]) >= {"upload", "vae_encode", "unet_decode"}
    assert scenarios["interactive"]["delivered_fps_mean"] > 0
    assert [r["sessions"] for r in scenarios["sessions"]] == [1, 2]
    assert {t["metric"] for t in report["targets"]} >= {"paper_b8_fps", "interactive_p99_ms"}
    assert report["meta"]["device"]["torch"]


def test_bench_rejects_unknown_scenarios(capsys):
    assert main(["bench", "--scenarios", "paper,warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err


def test_bench_webrtc_scenario_drives_a_real_server(tmp_path):
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--davis-dir",
            str(DAVIS_DIR),
            "--out-dir",
            str(tmp_path),
            "--scenarios",
            "webrtc",
            "--buckets",
            "1",
            "--webrtc-engine",
            "preview",
            "--webrtc-clients",
            "1",
            "--webrtc-codecs",
            "VP8,H264",
            "--webrtc-seconds",
            "2",
        ]
    )
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    rows = json.loads(path.read_text())["scenarios"]["webrtc"]
    assert [(r["codec"], r["clients"], r["completed"]) for r in rows] == [("VP8", 1, 1), ("H264", 1, 1)]
    assert all(r["delivered_fps_mean"] > 5 and r["server_cpu_cores"] > 0 for r in rows)
    assert all(r["p50_ms"] is not None and r["p50_ms"] > 0 for r in rows)
