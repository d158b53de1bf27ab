"""Results files: the schema is strict and is what the harness writes; every committed
file validates; the docs' generated blocks match the committed files; the pieces the
numbers come from (summary rules, latency blocks, histogram quantiles, pts matching)."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import report, schema
from bench.loopback import MAX_PROBES, PROBE_GAP, PROBE_OFFSET, ClipTrack, Received, match_frames, stamp
from bench.run import ResultsFile, RunClock, Step
from bench.stats import histogram_block, histogram_delta, histogram_quantile, latency_block

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# Files committed before the results schema that fail it on purpose (none left: the
# 2026-11-26 H100 files were replaced by the 2026-12-02 H200 runs).
LEGACY: dict[str, str] = {}
DEVICE = {"device": "cuda", "torch": "2.11", "diffusers": "0.42.1", "transformers": "5.17", "gpu": "H", "driver": None}
LAT = {"count": 10, "mean_ms": 12.0, "p50_ms": 11.0, "p95_ms": 15.0, "p99_ms": 18.0}
TEXT = {"mode": "every", "refresh": 8, "representative_frame": False, "image_size": 256, "tokens": 256}


def clip_row(b, fps):
    return {"B": b, "bucket": b, "frames": 480, "seconds": 480 / fps, "fps": fps, "latency": LAT}


def webrtc_row(codec, clients, p50):
    return {
        "codec": codec,
        "clients": clients,
        "completed": clients,
        "delivered_fps_min": 29.0,
        "delivered_fps_mean": 29.5,
        "e2e_client_p50_ms": [p50],
        "e2e": {**LAT, "p50_ms": p50},
        "engine": {**LAT, "method": "interpolated"},
        "transport_mean_ms": 0.0,
        "server_cpu_cores": 1.2,
        "anchor": {"probes_max": 3, "received": 240, "matched": 237},
        "stamps": {"read": 0, "agree": 0},
    }


def synthetic(tmp_path) -> dict:
    """What ResultsFile writes for a plausible set of scenarios (no engine needed)."""
    out = ResultsFile(
        tmp_path / "r.json",
        {"argv": ["livestyle", "bench"], "config": {"frames": 480}},
        DEVICE,
    )
    out.scenarios.update(
        paper={"text": TEXT, "rows": [clip_row(1, 70.0), clip_row(8, 150.0)]},
        cached_prompt={"text": {**TEXT, "mode": "refresh", "refresh": 16}, "rows": [clip_row(8, 260.0)]},
        sessions={
            "text": TEXT,
            "fed_fps": 30.0,
            "seconds": 5.0,
            "settle_s": 1.0,
            "rows": [
                {"sessions": n, "delivered_fps_min": fps, "delivered_fps_mean": fps, "dropped_in": 0, "latency": LAT}
                for n, fps in ((1, 30.0), (8, 29.0), (12, 27.0), (16, 20.0))
            ],
        },
        webrtc={
            "engine": "diffusion",
            "server": "first start",
            "fed_fps": 30,
            "seconds": 8.0,
            "settle_s": 1.0,
            "rows": [webrtc_row("VP8", 1, 60.0), webrtc_row("H264", 1, 70.0), webrtc_row("VP8", 8, 110.0)],
        },
        warmup={
            "engine": "diffusion",
            "buckets": [1, 2, 4, 8, 16],
            "first": {"ready_s": 200.0, "port_bound_s": 2.0, "engine": {}, "progress": []},
            "second": {"error": "not ready after 600 s", "progress": [{"t_s": 1.0, "status": "warming_up"}]},
        },
    )
    out.skip("paper_point", "the time budget (--budget-s) would not hold it")
    out.save()
    return json.loads(out.path.read_text())


def test_what_results_file_writes_validates_and_the_summary_follows_the_rules(tmp_path):
    r = synthetic(tmp_path)
    assert schema.validate(r) == []
    s = r["summary"]
    assert s["gpu"] == "H" and "driver" not in r["meta"]["device"]  # unknown values omitted, not null
    assert s["max_sessions_at_30fps"] == 8  # 12 sessions got 27 fps < 28.5
    assert s["many_sessions_p50_ms"] == 11.0 and s["sessions_12_fps"] == 27.0 and s["sessions_16_fps"] == 20.0
    assert s["e2e_codec_1"] == "H264" and s["e2e_p50_ms_1"] == 70.0  # the slower codec
    assert s["warmup_first_start_s"] == 200.0 and "warmup_second_start_s" not in s  # failed start: no number
    assert "paper_point_fps" not in s and {t["metric"] for t in r["targets"]} <= set(s)
    paper = next(t for t in r["targets"] if t["metric"] == "paper_b8_fps")
    assert paper == {
        "metric": "paper_b8_fps",
        "op": ">=",
        "value": 150.0,
        "source": "#16",
        "goal": 220,
        "met": False,
        "shortfall": 70.0,
        "shortfall_pct": 31.8,
    }
    assert r["meta"]["git"]["commit"] is None or len(r["meta"]["git"]["commit"]) == 40


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["scenarios"]["webrtc"].__setitem__("webrtc_note", "typed by hand"), "unknown key 'webrtc_note'"),
        (lambda r: r["scenarios"]["webrtc"]["rows"][0]["e2e"].__setitem__("p50_ms", None), "matches none"),
        (lambda r: r["summary"].__setitem__("paper_b8_fps", 200.0), "summary: differs"),
        (lambda r: r["targets"].pop(), "targets: differ"),
        (lambda r: r["meta"].pop("git"), "missing key 'git'"),
        (lambda r: r["meta"]["git"].__setitem__("commit", "HEAD"), "matches none"),
        (lambda r: r["scenarios"]["paper"]["rows"][0].__setitem__("fps", float("nan")), "not a finite number"),
        (lambda r: r["scenarios"].__setitem__("interactive", {}), "unknown key 'interactive'"),
        (lambda r: r["meta"]["processes"].append({"role": "viewer", "argv": []}), "role one of"),
    ],
)
def test_the_schema_rejects_what_the_code_does_not_write(tmp_path, mutate, expected):
    r = synthetic(tmp_path)
    mutate(r)
    problems = schema.validate(r)
    print(problems)
    assert any(expected in p for p in problems)


def test_nan_and_infinity_fail_at_parsing(tmp_path):
    r = synthetic(tmp_path)
    for token in ("NaN", "Infinity", "-Infinity"):
        path = tmp_path / f"{token}.json"
        path.write_text(json.dumps(r).replace('"fps": 150.0', f'"fps": {token}'))
        report_, problems = schema.load(path)
        assert report_ is None and token in problems[0]


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=30,
    )
)
def test_the_validator_never_crashes_on_any_json(value):
    problems = schema.validate(value)
    assert isinstance(problems, list) and problems  # nothing random is a results file


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["summary", "scenarios", "meta", "targets"]), st.text(min_size=1, max_size=12))
def test_any_extra_key_anywhere_top_level_fails(tmp_path_factory, where, key):
    r = synthetic(tmp_path_factory.mktemp("r"))
    target = r[where] if where != "targets" else r["targets"][0]
    if key in target:
        return
    target[key] = 1
    assert schema.validate(r)


def test_every_committed_results_file_validates():
    files = [p for pattern in ("*.json", "switches/*.json", "cpu/*.json") for p in RESULTS.glob(pattern)]
    seen = sorted(str(p.relative_to(RESULTS)) for p in files)
    assert set(LEGACY) <= set(seen), f"legacy files gone: drop them from LEGACY ({set(LEGACY) - set(seen)})"
    for name in seen:
        _, problems = schema.load(RESULTS / name)
        if name in LEGACY:
            assert problems, f"{name} validates now: take it off the LEGACY list"
        else:
            assert problems == [], f"{name}: {problems[:5]}"


def test_the_docs_blocks_are_generated_from_the_committed_files():
    docs = [REPO / "README.md", REPO / "docs" / "performance.md"]
    for doc in docs:
        assert "<!-- bench-report: " in doc.read_text(), f"{doc.name} has no generated block"
    fix = "run: python -m bench.report --update README.md docs/performance.md"
    assert report.main(["--check", *map(str, docs)]) == 0, fix


def test_report_blocks_name_scope_card_and_file(tmp_path):
    synthetic(tmp_path)
    results, bad = report.load_results([tmp_path / "r.json"])
    ctx = report.Context(results, bad, tmp_path)
    webrtc = report.section("webrtc", ctx)
    assert "Scope: end to end over loopback WebRTC; one H (2.11)" in webrtc and "[r.json](r.json)" in webrtc
    assert "| H264 | 1 | - | 1/1 | 29.0 | 70.0 |" in webrtc
    head = report.section("headline", ctx)
    assert "8 sessions at 30 fps each (engine-internal)" in head and "150.0 fps" in head
    assert "No committed results file holds the adapter sweep" in report.section("adapter", ctx)
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- bench-report: targets -->\nold\n<!-- /bench-report -->\nb\n")
    assert report.main(["--results-dir", str(tmp_path), "--check", str(doc)]) == 1
    assert report.main(["--results-dir", str(tmp_path), "--update", str(doc)]) == 0
    assert "old" not in doc.read_text() and "`paper_b8_fps`" in doc.read_text()
    assert report.main(["--results-dir", str(tmp_path), "--check", str(doc)]) == 0


def written(path: Path, config: dict, **scenarios) -> Path:
    """A results file as ResultsFile writes it (its summary follows from the scenarios)."""
    out = ResultsFile(path, {"argv": ["livestyle", "bench"], "config": config}, DEVICE)
    out.scenarios.update(scenarios)
    out.save()
    return path


def test_webrtc_rows_measured_again_later_replace_the_earlier_ones(tmp_path):
    """A later run of some rows (the 16-session rows after the first run's failed) takes
    their place in the table; every other row stays from the earlier file; each row names
    its file."""
    older = synthetic(tmp_path)
    webrtc = {**older["scenarios"]["webrtc"], "rows": [webrtc_row("VP8", 8, 90.0)]}
    written(tmp_path / "r2.json", {}, webrtc=webrtc)  # same second, later name: sorts as newer
    results, bad = report.load_results([tmp_path / "r.json", tmp_path / "r2.json"])
    assert bad == [] and results[0].path.name == "r2.json"
    text = report.section("webrtc", report.Context(results, bad, tmp_path))
    assert "File 1: Scope: end to end over loopback WebRTC" in text and "[r2.json](r2.json)" in text
    assert "File 2:" in text and "[r.json](r.json)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| VP8", "| H264"))]
    assert [r.split(" | ")[:2] for r in rows] == [["| VP8", "1"], ["| VP8", "8"], ["| H264", "1"]]
    assert rows[1].endswith("| 1 |") and "90.0" in rows[1] and "110.0" not in text  # from the newer file
    assert rows[0].endswith("| 2 |") and rows[2].endswith("| 2 |")


def test_webrtc_rows_of_another_layout_stand_beside_the_one_process_rows(tmp_path):
    """A run with media processes measures another layout: its rows do not replace the
    one-process rows of the same codec and sessions; both are shown, labelled."""
    older = synthetic(tmp_path)
    webrtc = {**older["scenarios"]["webrtc"], "media_processes": 2, "rows": [webrtc_row("VP8", 8, 90.0)]}
    webrtc["rows"][0]["media_loop_cores"] = [0.25, 0.75]
    written(tmp_path / "r2.json", {}, webrtc=webrtc)
    results, bad = report.load_results([tmp_path / "r.json", tmp_path / "r2.json"])
    text = report.section("webrtc", report.Context(results, bad, tmp_path))
    rows = [line for line in text.splitlines() if line.startswith(("| VP8", "| H264"))]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| VP8", "1", "-"],
        ["| VP8", "8", "-"],
        ["| VP8", "8", "2"],
        ["| H264", "1", "-"],
    ]
    assert "110.0" in rows[1] and "90.0" in rows[2] and "| 0.75 |" in rows[2]
    assert "over 2 media processes" in text


def test_speed_switch_runs_are_compared_with_the_defaults_never_headlined(tmp_path):
    """Each switch run is compared with the defaults file of its own card, never another's."""
    synthetic(tmp_path)
    (tmp_path / "switches").mkdir()
    paper = {"text": TEXT, "rows": [clip_row(8, 200.0)]}
    written(tmp_path / "switches" / "s.json", {"switches": [["text_compile", True]]}, paper=paper)
    other = ResultsFile(
        tmp_path / "switches" / "o.json",
        {"argv": [], "config": {"switches": [["fp8", "linear"]]}},
        {**DEVICE, "gpu": "K"},
    )
    other.scenarios.update(paper={"text": TEXT, "rows": [clip_row(8, 100.0)]})
    other.save()
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- bench-report: switches -->\n<!-- /bench-report -->\n"
        "<!-- bench-report: engine -->\n<!-- /bench-report -->\n"
    )
    assert report.main(["--results-dir", str(tmp_path), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert "| defaults | H | 150.0 | 260.0 | - |" in text
    assert "| `text_compile=1` | H | 200.0 | - | +33.3 % / - |" in text
    assert "| `fp8=linear` | K | 100.0 | - | - |" in text  # no defaults file of card K: no ratio
    assert "[s.json](switches/s.json)" in text
    assert "200.0" not in text.split("bench-report: engine")[1]  # the engine table stays the defaults' file


def test_an_invalid_file_is_listed_as_not_used(tmp_path):
    (tmp_path / "old.json").write_text('{"summary": {}}')
    results, bad = report.load_results([tmp_path / "old.json"])
    assert not results and "not used" in report.section("files", report.Context(results, bad, tmp_path))


# ---- the numbers' building blocks -------------------------------------------------------------


def test_latency_block_without_samples_says_why():
    assert latency_block([], "nothing matched") == {"count": 0, "reason": "nothing matched"}
    assert latency_block([1.0, 2.0, 3.0], "x")["p50_ms"] == 2.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.1, 4000), min_size=1, max_size=300))
def test_histogram_quantiles_land_in_the_bucket_of_the_true_quantile(samples):
    bounds = (1, 2.5, 5, 10, 20, 33, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, math.inf)
    cumulative = [(b, float(sum(s <= b for s in samples))) for b in bounds]
    before = ([(b, 0.0) for b in bounds], 0.0)
    block = histogram_block(*histogram_delta(before, (cumulative, sum(samples))), "none")
    assert block["count"] == len(samples) and block["mean_ms"] == pytest.approx(np.mean(samples), abs=0.01)
    for q in (50, 95, 99):
        true = float(np.percentile(samples, q, method="inverted_cdf"))
        upper = next(b for b in bounds if true <= b)
        lower = max([0.0] + [b for b in bounds if b < upper])
        assert lower - 1e-9 <= block[f"p{q}_ms"] <= upper + 1e-9


def test_histogram_quantile_in_the_open_bucket_is_the_last_bound():
    assert histogram_quantile(0.99, [(10.0, 0.0), (math.inf, 5.0)]) == 10.0


def test_run_clock_skips_a_step_that_cannot_fit_the_budget():
    lines = []
    clock = RunClock([Step("a", "step a", 1.0), Step("b", "step b", 500.0)], budget_s=60, out=lines.append)
    clock.print_plan()
    assert clock.begin("a") and not clock.begin("b") and clock.begin("b", required=True)
    assert "plan: 2 steps, about 501 s" in lines[0] and any("skipping step b" in line for line in lines)
    assert lines[-1].startswith("[2/2 |")


# ---- pts matching ------------------------------------------------------------------------------


def anchored_track(probes_sent: int, frames: int) -> ClipTrack:
    track = ClipTrack([np.zeros((512, 512, 3), np.uint8)], anchored=True)
    t0 = time.monotonic()
    track.probes = [(k * PROBE_GAP + k * PROBE_OFFSET, t0 + k) for k in range(probes_sent)]
    track.stream_start = t0 + probes_sent
    for i in range(frames):
        pts = track.stream_base + i * track.step
        track.sent_at[pts], track.sent_index[pts] = t0 + probes_sent + i / 30, i
    return track


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, MAX_PROBES),
    st.data(),
    st.lists(st.integers(-2, 2), min_size=60, max_size=60),
    st.sets(st.integers(0, 59), max_size=30),
)
def test_the_anchor_names_every_streamed_frame_exactly(probes, data, ticks, dropped):
    """Whichever probe came back first, with receivers rounding pts by a tick or two and
    frames dropped on the way, each received frame is matched to exactly its sent frame."""
    answered = data.draw(st.integers(0, probes - 1))
    track = anchored_track(probes, 60)
    constant = track.probes[answered][0]  # received pts = sent pts - the answered probe's pts
    image = np.zeros((512, 512, 3), np.uint8)
    received = [Received(0.0, 0, image)]  # the answered probe itself
    received += [Received(0.0, p - constant, image) for p, _ in track.probes[answered + 1 :]]
    kept = [i for i in range(60) if i not in dropped]
    for i in kept:
        pts = track.stream_base + i * track.step
        received.append(Received(track.sent_at[pts] + 0.05, pts - constant + ticks[i], image))
    matching = match_frames(track, received)
    assert matching.method == "anchor" and matching.probe == answered
    assert [m.index for m in matching.matches] == kept
    assert all(m.latency_ms == pytest.approx(50.0) for m in matching.matches)


def test_stamps_cross_check_the_anchor_and_still_match_unanchored_tracks():
    track = anchored_track(2, 10)
    frames = [stamp(np.full((512, 512, 3), 128, np.uint8), i) for i in range(10)]
    constant = track.probes[1][0]
    received = [Received(0.0, 0, frames[0])]
    received += [Received(9.0, track.stream_base + i * track.step - constant, frames[i]) for i in range(10)]
    matching = match_frames(track, received)
    assert (matching.stamps_read, matching.stamps_agree) == (10, 10)
    plain = ClipTrack(frames)
    for i in range(10):
        plain.sent_at[i * 3000] = 0.0
    shifted = [Received(1.0, i * 3000 - 4242 * 3000, frames[i]) for i in range(10)]
    legacy = match_frames(plain, shifted)
    assert legacy.method == "stamps" and [m.index for m in legacy.matches] == list(range(10))


def test_nothing_matches_without_probes_or_stamps():
    track = anchored_track(0, 5)
    assert match_frames(track, [Received(0.0, 5, np.zeros((8, 8, 3), np.uint8))]).method == "none"


@pytest.mark.unit
def test_git_state_falls_back_to_the_stamp_in_a_copy_without_git(tmp_path, monkeypatch):
    """The lent GPU machine gets the working tree without .git: results still name the commit."""
    import subprocess

    from bench import provenance

    stamp = tmp_path / ".source-commit.json"
    monkeypatch.setattr(provenance, "STAMP", stamp)
    state = provenance.git_state()
    assert state["commit"] is not None  # this checkout has .git
    provenance.write_stamp()

    def no_git(*_args: str) -> str:
        raise subprocess.CalledProcessError(128, "git")

    monkeypatch.setattr(provenance, "_git", no_git)
    copied = provenance.git_state()
    assert copied["commit"] == state["commit"] and copied["dirty"] == state["dirty"]
    assert "stamped" in copied["source"]
    monkeypatch.setenv(provenance.STAMP_ENV, "1")  # a copy whose .git does not match its files
    monkeypatch.setattr(provenance, "_git", lambda *_a: "0" * 40)
    assert provenance.git_state()["commit"] == state["commit"]
    monkeypatch.setattr(provenance, "_git", no_git)
    monkeypatch.delenv(provenance.STAMP_ENV)
    stamp.unlink()
    assert provenance.git_state()["commit"] is None


@pytest.mark.unit
def test_git_state_names_each_changed_file_whole(tmp_path, monkeypatch):
    """`git status --porcelain` starts an unstaged change's line with a space: the first
    changed file must not lose its first letter."""
    import subprocess

    from bench import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for name in ("bench.json", "code.py"):
        (tmp_path / name).write_text("0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.git_state()["dirty"] is False
    (tmp_path / "bench.json").write_text("1\n")  # unstaged: " M bench.json"
    (tmp_path / "code.py").write_text("1\n")
    git("add", "code.py")  # staged: "M  code.py"
    state = provenance.git_state()
    assert state["dirty"] is True and state["changed"] == ["bench.json", "code.py"]


def test_webrtc_rows_whose_clients_failed_say_so_with_their_first_error(tmp_path):
    older = synthetic(tmp_path)
    row = {**webrtc_row("H264", 8, 70.0), "completed": 5, "errors": ["TimeoutError: data channel not open"]}
    written(tmp_path / "r2.json", {}, webrtc={**older["scenarios"]["webrtc"], "rows": [row]})
    results, bad = report.load_results([tmp_path / "r.json", tmp_path / "r2.json"])
    text = report.section("webrtc", report.Context(results, bad, tmp_path))
    assert "- H264 x8 (file 1): 3 client(s) failed, first error: TimeoutError: data channel not open" in text
    assert "x1 (file" not in text  # the rows whose clients all finished are not listed
