"""The path a user with the published weights takes: DreamLiteMobilePipeline.from_pretrained.

The tiny pipeline is saved with save_pretrained, which lays a folder out like the published
repository (carlofkl/DreamLite-mobile, revision `diffusers`: model_index.json plus unet/,
vae/, text_encoder/, tokenizer/, processor/, scheduler/). Through it: `--model DIR` serves a
real WebRTC session and stylizes a file; the Hub id downloads from a FakeHub while the port
already answers; the same id then resolves from the cache offline; broken folders are
refused before anything starts, naming the part and the remedy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from aiohttp import ClientSession
from browser_support import ARTIFACTS, ROOT, LiveServer, free_port
from fake_hub import FakeHub
from media import DAVIS_DIR, ClipTrack, LoopbackClient, davis_clip

from pipeline.config import EngineConfig
from pipeline.diffusion.loading import ModelLoadError, load_components
from pipeline.diffusion.tiny import build_tiny_components, tiny_pipeline
from pipeline.engines import EngineUnavailableAtStart, resolve_engine
from server.cli import main

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(400)]

REPO, REVISION = "carlofkl/DreamLite-mobile", "diffusers"
PARTS = {"unet", "vae", "text_encoder", "tokenizer", "processor", "scheduler"}
CPU = ("--engine", "diffusion", "--device", "cpu", "--max-batch", "1")  # one bucket to warm up on a CPU
# Served engines encode the prompt text only (cached): CPU steps of seconds, not tens of seconds.
SERVE_CPU = (*CPU, "--text-mode", "prompt")
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
STOP_S = 90  # a graceful stop waits for the engine's current step, seconds long on a loaded CPU


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(0)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "DreamLite-mobile"
    tiny_pipeline(tiny).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """The first frames of a DAVIS clip as a short .mp4 (the CPU engine takes seconds a frame)."""
    path = tmp_path_factory.mktemp("clips") / "goat-3.mp4"
    with av.open(str(DAVIS_DIR / "goat.mp4")) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream("mpeg4", rate=24)
        out.width = out.height = 512
        out.pix_fmt = "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == 3:
                break
            frame.pts, frame.time_base = i, Fraction(1, 24)
            for packet in out.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    return path


def test_save_pretrained_lays_the_folder_out_like_the_published_repository(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "DreamLiteMobilePipeline"
    assert {k for k in index if not k.startswith("_")} == PARTS
    for part in ("unet", "vae"):
        assert (saved / part / "config.json").is_file() and (
            saved / part / "diffusion_pytorch_model.safetensors"
        ).is_file()
    assert (saved / "text_encoder" / "model.safetensors").is_file()
    assert (saved / "processor" / "tokenizer.json").is_file()  # as in the published repository
    assert (saved / "scheduler" / "scheduler_config.json").is_file()


def test_from_pretrained_loads_exactly_the_saved_weights(tiny, saved):
    loaded = load_components(str(saved), None, torch.device("cpu"), torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), f"{name} weights differ after the round trip"
    prompt = "oil painting, vibrant colors"
    assert loaded.tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids
    assert dict(loaded.scheduler.config) == dict(tiny.scheduler.config)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_stylize_through_the_saved_folder(saved, clip_file, tmp_path, caplog):
    target = tmp_path / "out.mp4"
    caplog.set_level("INFO")
    code = main(["stylize", str(clip_file), str(target), "--prompt", "oil painting", "--model", str(saved), *CPU])
    assert code == 0
    assert f"{saved} ({saved}) on cpu" in caplog.text  # the folder was loaded, not the in-code tiny model
    frames, sources = decode(target), decode(clip_file)
    assert len(frames) == len(sources) == 3
    assert all(f.shape == (512, 512, 3) for f in frames)
    difference = np.abs(frames[0].astype(int) - sources[0].astype(int)).mean()
    print(f"\nstylize: mean |out - in| of the first frame {difference:.1f}")
    assert difference > 10 and frames[0].std() > 5  # a new picture, not a copy and not blank


def spawn_server(name: str, *args: str, env: dict[str, str] | None = None) -> LiveServer:
    """`livestyle serve` without waiting for it (LiveServer.start waits for ok)."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log_path = ARTIFACTS / f"pretrained-server-{name}.log"
    # python -m from the checkout: this tree's code, whatever the venv's entry point points at.
    command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
    return LiveServer(f"http://127.0.0.1:{port}", process, log_path)


def wait_until(condition, what: str, timeout: float, server: LiveServer):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if value := condition():
                return value
        except OSError:
            pass  # not answering yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{server.log_text()[-3000:]}")


def metric(server: LiveServer, name: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])


def wait_engine_idle(server: LiveServer) -> None:
    """Until no step is running: the step counter holds still for twice the mean step time.
    (A stop during a seconds-long CPU step outlasts the bridge's stop timeout; see the report.)"""
    while True:
        steps = metric(server, "livestyle_engine_steps_total")
        mean_s = metric(server, "livestyle_engine_step_ms_sum") / max(steps, 1) / 1000
        time.sleep(2 * mean_s + 0.5)
        if metric(server, "livestyle_engine_steps_total") == steps:
            return


@pytest.fixture
def served(saved) -> Iterator[LiveServer]:
    server = spawn_server("folder", "--model", str(saved), *SERVE_CPU)
    yield server
    if server.process.poll() is None:
        wait_engine_idle(server)
    assert server.stop(timeout=STOP_S) == 0, server.log_text()[-3000:]
    assert not server.log_problems(), server.log_problems()


async def test_serve_the_saved_folder_over_webrtc(served, saved):
    health = await asyncio.to_thread(
        wait_until, lambda: served.health()[1]["status"] == "ok" and served.health()[1], "ok", 300, served
    )
    assert health["engine"]["kind"] == "diffusion" and health["engine"]["model"] == str(saved)
    clip = davis_clip("blackswan")[:24]
    async with ClientSession() as http:
        client = LoopbackClient(served.url, ClipTrack(clip, fps=10), prompt="oil painting")
        await client.connect(http)
        try:
            await client.wait_frames(2, timeout=180)
        finally:
            await client.close()
    assert client.answer["engine"]["kind"] == "diffusion"
    image = client.received[-1].image
    assert image.shape == (512, 512, 3) and image.std() > 5
    to_camera = min(np.abs(image.astype(int) - f.astype(int)).mean() for f in clip)
    print(f"\nserve: {len(client.received)} stylized frames; mean |out - nearest camera frame| {to_camera:.1f}")
    assert to_camera > 10  # the diffusion engine made it, not a pass-through


@pytest.fixture
def hub(saved) -> Iterator[FakeHub]:
    with FakeHub(saved, REPO, REVISION) as hub:
        yield hub


def test_port_answers_warming_up_while_the_weights_download(hub, tmp_path):
    hub.hold(UNET_WEIGHTS)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    server = spawn_server("download", "--model", REPO, *SERVE_CPU, env=env)
    try:
        status, body = wait_until(server.health, "/healthz to answer", 120, server)
        print(f"\ndownload: /healthz answers {status} {body['status']} while {UNET_WEIGHTS} is held")
        assert status == 200 and body["status"] == "warming_up"
        assert body["engine"]["kind"] == "diffusion" and "downloading" in body["engine"]["reason"]
        wait_until(lambda: f"downloading {REPO}:" in server.log_text(), "download progress in the log", 60, server)
        progress = lambda: server.health()[1].get("progress") or ""  # noqa: E731
        wait_until(lambda: "downloading" in progress(), "download progress in /healthz", 60, server)
        assert UNET_WEIGHTS not in hub.downloads
        hub.release()
        wait_until(lambda: server.health()[1]["status"] == "ok", "the downloaded model to serve", 300, server)
        assert UNET_WEIGHTS in hub.downloads and f"loaded {REPO}" in server.log_text()
    finally:
        hub.release()
        assert server.stop(timeout=STOP_S) == 0, server.log_text()[-3000:]
    assert not server.log_problems(), server.log_problems()


OFFLINE_PROBE = """
import json
from pipeline.config import EngineConfig
from pipeline.engines import resolve_engine
from pipeline.stats import EngineStats
try:
    spec = resolve_engine(EngineConfig(kind="diffusion", device="cpu", max_batch=1))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(1)
core = spec.build(EngineStats(), lambda _msg: None)
unet = core.backend._unet
print(json.dumps({"reason": spec.info.reason, "unet_sum": float(sum(p.double().sum() for p in unet.parameters()))}))
core.close()
"""


def run_probe(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hub_id_resolves_from_the_cache_offline(hub, tiny, tmp_path):
    from huggingface_hub import snapshot_download

    hf_home = tmp_path / "hf"
    snapshot_download(REPO, revision=REVISION, cache_dir=hf_home / "hub", endpoint=hub.url)  # as a first run would
    done = run_probe({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\noffline: {result['reason']}")
    assert "Hugging Face cache" in result["reason"]
    assert result["unet_sum"] == pytest.approx(float(sum(p.double().sum() for p in tiny.unet.parameters())))


def test_hub_id_offline_without_a_cache_names_the_download_command(tmp_path):
    done = run_probe({"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-3000:]
    message = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    print(f"\noffline, empty cache: {message}")
    assert message.startswith("EngineUnavailableAtStart") and "HF_HUB_OFFLINE" in message
    assert f"hf download {REPO} --revision {REVISION}" in message


def _drop_unet_weights(folder: Path) -> None:
    (folder / UNET_WEIGHTS).unlink()


def _truncate_text_encoder(folder: Path) -> None:
    file = folder / "text_encoder" / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _garble_vae(folder: Path) -> None:
    file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:64] = b"\xff" * 56  # the JSON header
    file.write_bytes(bytes(data))


def _lfs_pointer(folder: Path) -> None:
    (folder / UNET_WEIGHTS).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")


def _drop_scheduler(folder: Path) -> None:
    shutil.rmtree(folder / "scheduler")


def _break_index(folder: Path) -> None:
    (folder / "model_index.json").write_text('{"_class_name": "DreamLiteMobilePipeline",')


def _break_tokenizer(folder: Path) -> None:
    file = folder / "tokenizer" / "tokenizer.json"
    file.write_text(file.read_text()[:1000])


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_drop_unet_weights, ["part 'unet'", "no weights"]),
        (_truncate_text_encoder, ["part 'text_encoder'", "model.safetensors", "truncated"]),
        (_garble_vae, ["part 'vae'", "corrupt"]),
        (_lfs_pointer, ["part 'unet'", "Git LFS pointer"]),
        (_drop_scheduler, ["part 'scheduler'", "scheduler/ is missing"]),
        (_break_index, ["model_index.json is not valid JSON"]),
        (_break_tokenizer, ["part 'tokenizer'", "tokenizer/tokenizer.json is not valid JSON"]),
    ],
)
def test_a_broken_folder_is_refused_before_anything_starts(saved, tmp_path, damage, words):
    broken = tmp_path / "DreamLite-mobile"
    shutil.copytree(saved, broken)
    damage(broken)
    with pytest.raises(EngineUnavailableAtStart) as info:
        resolve_engine(EngineConfig(kind="auto", device="cpu", model=str(broken)))
    message = str(info.value)
    print(f"\n{damage.__name__}: {message}")
    for word in [*words, str(broken), f"hf download {REPO} --revision {REVISION} --local-dir {broken}"]:
        assert word in message


def test_cli_refuses_a_broken_folder_before_binding(saved, tmp_path, caplog):
    broken = tmp_path / "DreamLite-mobile"
    shutil.copytree(saved, broken)
    _drop_scheduler(broken)
    port = free_port()
    assert main(["serve", "--port", str(port), "--model", str(broken), *CPU]) == 1
    assert "part 'scheduler'" in caplog.text
    with socket.socket() as sock:  # nothing listened: the port is still free
        sock.bind(("0.0.0.0", port))


def test_a_part_that_parses_but_does_not_fit_fails_at_load_naming_the_remedy(saved, tmp_path):
    broken = tmp_path / "DreamLite-mobile"
    shutil.copytree(saved, broken)
    config = json.loads((broken / "unet" / "config.json").read_text())
    config["block_out_channels"] = [c * 2 for c in config["block_out_channels"]]  # weights no longer fit
    (broken / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_components(str(broken), None, torch.device("cpu"), torch.float32)
    message = str(info.value)
    print(f"\nmismatched unet config: {message[:300]}...")
    assert str(broken) in message and "part 'unet'" in message and "hf download" in message
