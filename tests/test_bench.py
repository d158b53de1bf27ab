"""`livestyle bench` smoke runs on the tiny model (CPU): every scenario keeps working, and
what the harness writes is exactly what the results schema allows (the real measurements
need a GPU: docs/performance.md, Reproduce). No speed is asserted; the runs print what
they saw."""

import dataclasses
import json
import subprocess

import pytest
from media import DAVIS_DIR

from bench import schema
from bench.harness import BenchConfig
from bench.provenance import REPO
from pipeline.config import DiffusionConfig, EngineConfig
from server.cli import main
from server.config import ServerConfig, load_config

pytestmark = [pytest.mark.timeout(600)]


def run_bench(tmp_path, *args: str) -> dict:
    code = main(["bench", "--model", "tiny", "--davis-dir", str(DAVIS_DIR), "--out-dir", str(tmp_path), *args])
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    report, problems = schema.load(path)
    assert problems == [], problems  # schema == what the code writes
    assert "NaN" not in path.read_text()
    return report


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.diffusion
def test_every_engine_scenario_on_the_tiny_model(tmp_path):
    report = run_bench(
        tmp_path,
        *("--size", "128", "--frames", "4", "--batches", "1,8", "--buckets", "1,8", "--sessions", "1,2"),
        *("--live-seconds", "1", "--naive-frames", "1", "--adapter-refresh", "4", "--tag", "smoke"),
    )
    sc, summary, meta = report["scenarios"], report["summary"], report["meta"]
    print(json.dumps(summary))
    assert set(sc) == {
        "naive",
        "naive_matched",
        "engine_warmup",
        "paper",
        "cached_prompt",
        "components",
        "serial",
        "sessions",
        "paper_point",
        "adapter",
    }
    engine = DiffusionConfig()
    assert (sc["naive"]["text_image_size"], sc["naive"]["text_sequence_tokens"] != engine.text_tokens) == (512, True)
    assert (sc["naive_matched"]["text_image_size"], sc["naive_matched"]["text_sequence_tokens"]) == (
        engine.text_image_size,
        engine.text_tokens,
    )
    assert [r["B"] for r in sc["paper"]["rows"]] == [1, 8] and sc["paper"]["text"]["mode"] == "every"
    assert not sc["paper"]["text"]["representative_frame"] and sc["cached_prompt"]["text"]["refresh"] == 16
    assert set(sc["components"]["stage_ms_mean"]) >= {"upload", "vae_encode", "unet_decode"}
    assert set(sc["serial"]) == {"paper", "cached_prompt"}
    assert [r["sessions"] for r in sc["sessions"]["rows"]] == [1, 2]
    point = sc["paper_point"]
    assert point["text"]["mode"] == "every" and point["text"]["representative_frame"]
    assert (point["adapter"]["blocks"], point["adapter"]["refresh"], point["row"]["B"]) == ("down_blocks", 8, 8)
    assert [r["adapter"]["refresh"] for r in sc["adapter"]["rows"]] == [4]
    assert set(sc["engine_warmup"]) == {"main", "lllite_down_blocks"}
    assert {"paper_b8_fps", "cached_prompt_b8_fps", "paper_point_fps", "speedup_vs_naive_matched"} <= set(summary)
    assert summary["gpu"] == "cpu" and summary["max_sessions_at_30fps"] in (0, 1, 2)
    # Provenance: the commit, and every configuration exactly as its dataclass has it.
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert meta["git"]["commit"] == head.strip()
    (harness,) = meta["processes"]
    assert harness["argv"][:4] == ["livestyle", "bench", "--model", "tiny"]
    assert set(harness["config"]) == field_names(BenchConfig)
    for name, config in harness["engines"].items():
        assert set(config) == field_names(EngineConfig) and set(config["diffusion"]) == field_names(DiffusionConfig)
        assert config["size"] == 128, name
    assert meta["device"]["torch"] and meta["host"]["libraries"]["aiortc"]


@pytest.mark.webrtc
def test_warmup_and_webrtc_against_real_server_processes(tmp_path):
    """Preview engine: the pixel stamps survive, so they check the pts anchor frame by frame."""
    report = run_bench(
        tmp_path,
        *("--scenarios", "warmup,webrtc", "--webrtc-engine", "preview", "--webrtc-clients", "1"),
        *("--webrtc-codecs", "VP8,H264", "--webrtc-seconds", "2"),
    )
    sc, processes = report["scenarios"], report["meta"]["processes"]
    warmup = sc["warmup"]
    assert warmup["first"]["ready_s"] >= warmup["first"]["port_bound_s"] > 0 and warmup["second"]["ready_s"] > 0
    rows = sc["webrtc"]["rows"]
    for row in rows:
        print({k: row[k] for k in ("codec", "delivered_fps_min", "e2e", "engine", "anchor", "stamps")})
    assert [(r["codec"], r["clients"], r["completed"]) for r in rows] == [("VP8", 1, 1), ("H264", 1, 1)]
    for r in rows:
        assert r["e2e"]["count"] > 0 and r["engine"]["count"] > 0 and r["server_cpu_cores"] > 0
        # the event loop is one thread of the process; steps carry the session's frames
        assert 0 < r["server_loop_cores"] <= r["server_cpu_cores"] and r["server_loop_cores"] <= 1.05
        assert r["engine_step"]["count"] > 0 and r["batch_mean"] >= 1
        assert r["anchor"]["matched"] >= r["e2e"]["count"]
        assert r["stamps"]["read"] >= r["anchor"]["matched"] * 0.5 and r["stamps"]["agree"] == r["stamps"]["read"]
    servers = [p for p in processes if p["role"] == "server"]
    assert [s["name"] for s in servers] == ["first start", "second start"] and servers[0]["argv"] == servers[1]["argv"]
    argv = servers[0]["argv"]
    assert argv[1:4] == ["-m", "server.cli", "serve"] and "--engine" in argv
    expected = load_config(argv[4:], environ={})
    assert servers[0]["config"]["port"] == expected.port and servers[0]["config"]["engine"]["kind"] == "preview"
    assert set(servers[0]["config"]) == field_names(ServerConfig)
    clients = [p for p in processes if p["role"] == "client"]
    assert [c["count"] for c in clients] == [1, 1] and clients[0]["argv"][1:4] == ["-m", "bench.webrtc_load", "client"]


def test_webrtc_clients_spread_over_media_processes_that_feed_one_engine(tmp_path):
    """--media-processes 2: three clients go round robin to two engine-less servers, whose
    sessions are stepped by the first server's engine (its /metrics count their frames)."""
    report = run_bench(
        tmp_path,
        *("--scenarios", "webrtc", "--webrtc-engine", "preview", "--webrtc-clients", "3"),
        *("--webrtc-codecs", "VP8", "--webrtc-seconds", "2", "--media-processes", "2"),
    )
    section, processes = report["scenarios"]["webrtc"], report["meta"]["processes"]
    assert section["media_processes"] == 2
    (row,) = section["rows"]
    assert row["completed"] == 3 and row["e2e"]["count"] > 0 and row["engine"]["count"] > 0, row
    assert row["engine_step"]["count"] > 0 and len(row["media_loop_cores"]) == 2 and min(row["media_loop_cores"]) > 0
    servers = [p for p in processes if p["role"] == "server"]
    assert [s["name"] for s in servers] == ["webrtc server", "media process 1", "media process 2"]
    host = servers[0]["config"]["engine_host"]
    assert host and all(s["config"]["engine_socket"] == host for s in servers[1:])
    assert [s["config"]["max_sessions"] for s in servers[1:]] == [2, 2]
    clients = [p for p in processes if p["role"] == "client"]
    assert [c["count"] for c in clients] == [2, 1]
    urls = [c["argv"][c["argv"].index("--url") + 1] for c in clients]
    assert urls == [f"http://127.0.0.1:{s['config']['port']}" for s in servers[1:]]


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["--scenarios", "paper,warp-drive"], "warp-drive"),
        (["--scenarios", "interactive"], "interactive"),
        (["--adapter-blocks", "up_blocks"], "--adapter-blocks"),
        (["--budget-s", "-5"], "--budget-s -5.0"),
        (["--serve-buckets", "3"], "--serve-buckets"),
        (["--media-processes", "17"], "--media-processes 17"),
        (["--sessions", "0,4"], "counts of 1..16"),
        (["--webrtc-codecs", "AV1"], "--webrtc-codecs"),
        (["--size", "100"], "size 100"),
    ],
)
def test_bench_rejects_bad_options_before_any_work(capsys, args, message):
    assert main(["bench", "--davis-dir", str(DAVIS_DIR), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.unit
def test_bench_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert f"(default: {BenchConfig.frames})" in out and "--serve-arg" in out


@pytest.mark.unit
def test_a_second_run_of_the_same_day_and_tag_gets_its_own_file(tmp_path):
    from bench.harness import unused_path

    first = tmp_path / "2026-12-02-NVIDIA-H200-webrtc.json"
    assert unused_path(first) == first
    first.write_text("{}")
    second = unused_path(first)
    assert second.name == "2026-12-02-NVIDIA-H200-webrtc-2.json"
    second.write_text("{}")
    assert unused_path(first).name == "2026-12-02-NVIDIA-H200-webrtc-3.json"


@pytest.mark.unit
def test_speed_switches_reach_the_in_process_engines_and_the_servers(tmp_path):
    """`bench --text-compile 1 ...` measures what `serve --text-compile 1` runs: the same
    DiffusionConfig fields in the in-process engines and the same flags for the servers."""
    from bench.serve_scenarios import serve_args
    from server.config import load_bench_config

    argv = ["--davis-dir", str(DAVIS_DIR), "--text-compile", "1", "--fuse-qkv", "1", "--channels-last", "all"]
    config = load_bench_config([*argv, "--inductor", "none", "--text-length-step", "0"])
    diffusion = config.engine_config().diffusion
    assert (diffusion.text_compile, diffusion.fuse_qkv, diffusion.channels_last) == (True, True, "all")
    assert diffusion.inductor == () and diffusion.text_length_step == 0
    adapter = config.diffusion_config(lllite="x.safetensors", buckets=(8,))
    assert adapter.text_compile and adapter.fuse_qkv and adapter.compile == config.compile
    server = load_config(["--port", "0", *serve_args(config)]).engine.diffusion
    for name, _ in config.switches:
        assert getattr(server, name) == getattr(diffusion, name), name
    untouched = load_bench_config(["--davis-dir", str(DAVIS_DIR)])
    assert untouched.switches == () and "--text-compile" not in serve_args(untouched)
    assert untouched.engine_config().diffusion.text_compile == DiffusionConfig().text_compile


@pytest.mark.unit
def test_the_in_process_engine_has_a_servers_buckets_unless_told_otherwise():
    """The sessions rows (max_sessions_at_30fps) measure the scheduler with the buckets a
    server has: with only 1, 8 and 16, 4 sessions padded to 8 (57.6 ms p50 on an H100
    against 10.4 ms with every bucket, files of 2026-12-07)."""
    from bench.harness import plan
    from server.config import load_bench_config

    config = load_bench_config(["--davis-dir", str(DAVIS_DIR), "--scenarios", "sessions"])
    assert config.engine_config().diffusion.buckets is None and config.max_batch() == 16
    assert any(s.label.endswith("buckets 1,2,4,8,16") for s in plan(config))
    chosen = load_bench_config(["--davis-dir", str(DAVIS_DIR), "--scenarios", "sessions", "--buckets", "1,8,16"])
    assert chosen.engine_config().diffusion.buckets == (1, 8, 16)


@pytest.mark.unit
def test_a_speed_switch_the_engine_refuses_is_refused_before_any_work(capsys):
    # text_compile needs the prefix cache: the engine's own check, at argument time
    assert main(["bench", "--davis-dir", str(DAVIS_DIR), "--text-compile", "1", "--text-prefix-cache", "0"]) == 2
    assert "--text-prefix-cache" in capsys.readouterr().err


@pytest.mark.unit
def test_the_measured_server_admits_every_offer_of_a_run_from_one_address():
    """All clients of a webrtc run connect from this machine's one address: the server the
    bench starts must not refuse them as one client opening sessions in a loop (the H200
    run of 5fdd742 got 429 for 10 of its 16-session offers)."""
    from bench.serve_scenarios import serve_args
    from server.access import RateLimiter
    from server.config import load_bench_config

    config = load_bench_config(["--davis-dir", str(DAVIS_DIR)])
    server = load_config(["--port", "0", *serve_args(config)])
    limiter = RateLimiter(server.offer_rate_per_min, server.offer_burst)
    for _ in range(2 * sum(config.webrtc_clients) * len(config.webrtc_codecs)):  # every run, twice
        limiter.hit("127.0.0.1")
    assert ServerConfig().offer_rate_per_min > 0  # a real server keeps its limit
