"""A newcomer's first hour, as the README walks it: every argument is checked before any work
starts, with a message naming the flag and the remedy; output files appear only when complete
(a real SIGINT leaves nothing behind); the log names the address really bound; help texts show
defaults; the wrapper script runs the venv's command; the page has a favicon."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import pytest
from browser_support import ROOT, free_port, http_json
from fakes import FakeBackend
from media import DAVIS_DIR

from pipeline.client import EngineSpec
from pipeline.core import EngineCore
from pipeline.engines import diffusion_stack_missing
from pipeline.stats import EngineStats
from pipeline.video_file import partial_path, stylize_file
from server.cli import listening_lines, main
from server.config import _CLUSTER_FIELDS, _DIFFUSION_FIELDS, _ENGINE_FIELDS, _SERVER_FIELDS

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

GOAT = DAVIS_DIR / "goat.mp4"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`livestyle ARGS` as a user runs it (python -m from this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ---- arguments refused before any work -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["stylize", str(GOAT), "/nonexistent-folder/out.mp4"], ["/nonexistent-folder does not exist", "mkdir -p"]),
        (["stylize", str(GOAT), "{tmp}/out.avi"], ["'.avi'", ".mp4", "OUTPUT"]),
        (["stylize", str(GOAT), "{tmp}"], ["is a folder"]),
        (["stylize", "{tmp}/missing.mp4", "{tmp}/out.mp4"], ["missing.mp4 does not exist"]),
        (["stylize", "{tmp}/notes.txt", "{tmp}/out.mp4"], ["notes.txt is not a video FFmpeg can read"]),
        (["stylize", "{tmp}/tone.wav", "{tmp}/out.mp4"], ["tone.wav has no video stream", "audio"]),
        (["stylize", str(GOAT), "{tmp}/out.mp4", "--model", "/nonexistent"], ["--model /nonexistent", "no such"]),
        (["serve", "--model", "/nonexistent"], ["--model /nonexistent", "Hugging Face id", "tiny"]),
        (["serve", "--model", "{tmp}/notes.txt"], ["is a file, not a model folder"]),
        (["serve", "--model", "random:{tmp}"], ["dreamlite_mobile_unet_config.json"]),
        (["serve", "--max-batch", "3"], ["max_batch 3", "1, 2, 4, 8, 16"]),
    ],
)
def test_bad_arguments_are_refused_at_once_naming_the_flag(tmp_path, capsys, caplog, args, words):
    (tmp_path / "notes.txt").write_text("not a video")
    with wave.open(str(tmp_path / "tone.wav"), "wb") as tone:  # a real media file without video
        tone.setnchannels(1)
        tone.setsampwidth(2)
        tone.setframerate(8000)
        tone.writeframes(b"\x00\x10" * 8000)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "stylize":
        args += ["--prompt", "oil painting"]
    t0 = time.monotonic()
    code = main(args)
    seconds = time.monotonic() - t0
    said = capsys.readouterr().err + caplog.text
    print(f"\n{' '.join(args[:3])}: exit {code} after {seconds:.2f} s: {said.strip().splitlines()[-1]}")
    assert code == 2, said
    for word in words:
        assert word in said
    assert "Traceback" not in said
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))  # nothing written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_diffusion_without_a_gpu_says_so_without_contradiction():
    done = run_cli("serve", "--engine", "diffusion", "--port", str(free_port()))
    print(f"\n{done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 1
    assert "--engine diffusion cannot start: no CUDA device is available" in done.stderr
    assert "--device cpu" in done.stderr and "--engine preview" in done.stderr
    assert "using the CPU preview" not in done.stderr  # it does not start, so it does not fall back


WITHOUT_TORCH = (
    "import sys; sys.modules.update(torch=None, diffusers=None); from server.cli import main; sys.exit(main())"
)


@pytest.mark.parametrize(
    "args",
    [
        ["stylize", str(GOAT), "{tmp}/out.mp4", "--prompt", "x", "--model", "tiny"],
        ["serve", "--engine", "diffusion"],
        ["bench", "--scenarios", "cached_prompt"],
    ],
)
def test_a_venv_without_torch_says_how_to_install_the_diffusion_stack(tmp_path, args):
    """As in a venv that scripts/serve.sh made on a CPU machine: torch and diffusers absent."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    print(f"\n{args[0]} without torch: exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode in (1, 2)
    assert "torch is" in done.stderr and "LIVESTYLE_WITH_DIFFUSION=1 scripts/setup.sh serve" in done.stderr
    assert "ModuleNotFoundError" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_the_real_environment_has_the_diffusion_stack():
    # The test above fakes its absence; this one keeps the fake honest about what it replaces.
    assert diffusion_stack_missing() is None


def test_a_port_in_use_names_the_flag():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--engine", "preview")
    print(f"\n{done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


# ---- help texts ----------------------------------------------------------------------------


def test_every_option_shows_its_default_and_environment_variable():
    help_text = " ".join(run_cli("serve", "--help").stdout.split())  # argparse wraps lines
    help_text = help_text[help_text.index("options:") :]  # past the usage summary
    tables = {**_SERVER_FIELDS, **_ENGINE_FIELDS, **_DIFFUSION_FIELDS, **_CLUSTER_FIELDS}
    for dest, (var, _cast, _field) in tables.items():
        flag = "--" + dest.replace("_", "-")
        entry = help_text[help_text.index(flag + " ") + len(flag) :]
        following = re.search(r" --[a-z][a-z-]* [A-Z{]", entry)  # the next option and its metavar
        entry = entry[: following.start()] if following else entry
        assert "default" in entry and var in entry, f"{flag}: {entry!r}"
    assert "(default: 8080; env LIVESTYLE_PORT)" in help_text
    assert "(default: carlofkl/DreamLite-mobile; env LIVESTYLE_MODEL)" in help_text
    stylize_help = " ".join(run_cli("stylize", "--help").stdout.split())
    assert "(default: auto; env LIVESTYLE_ENGINE)" in stylize_help and ".mp4, .mov, .mkv" in stylize_help


# ---- the address the log names --------------------------------------------------------------


def test_listening_lines_name_the_address_and_the_urls():
    everywhere = listening_lines("0.0.0.0", 8080, "http")
    assert everywhere[0] == "listening on all interfaces (0.0.0.0), port 8080"
    assert "open http://localhost:8080 on this machine" in everywhere
    assert listening_lines("127.0.0.1", 9000, "https") == ["listening on 127.0.0.1:9000", "open https://127.0.0.1:9000"]
    assert listening_lines("::1", 9000, "http")[1] == "open http://[::1]:9000"


def test_the_log_names_the_port_really_bound_and_it_answers(tmp_path):
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--engine", "preview"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        port = int(found[1])
        assert port != 0 and f"open http://127.0.0.1:{port}" in log_path.read_text()
        while True:
            with contextlib.suppress(OSError):
                status, body = http_json(f"http://127.0.0.1:{port}/healthz")
                break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        print(f"\nport 0 -> the log says {port}; /healthz there: {status} {body['status']}")
        assert status == 200 and body["engine"]["kind"] == "preview"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


# ---- outputs appear only when complete ------------------------------------------------------


def long_clip(path: Path, repeats: int) -> Path:
    """goat.mp4 played `repeats` times: a file that takes a while to stylize."""
    with av.open(str(GOAT)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    with av.open(str(path), "w") as dst:
        out = dst.add_stream("mpeg4", rate=24)
        out.width = out.height = 512
        out.pix_fmt = "yuv420p"
        out.options = {"qscale": "20"}
        for i, image in enumerate(frames * repeats):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            for packet in out.encode(frame):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    return path


def test_ctrl_c_leaves_no_half_written_output(tmp_path):
    source = long_clip(tmp_path / "long.mp4", repeats=8)
    target = tmp_path / "out.mp4"
    partial = partial_path(target)
    # Ctrl-C as in a terminal: a runner that started us in the background (nohup, `cmd &`)
    # hands down SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    as_in_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'livestyle'; runpy.run_module('server.cli', run_name='__main__')"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            as_in_a_terminal,
            "stylize",
            str(source),
            str(target),
            "--prompt",
            "x",
            "--engine",
            "preview",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (partial.exists() and partial.stat().st_size > 100_000):  # frames are being written
            assert process.poll() is None, f"stylize ended (exit {process.returncode}) before the interrupt"
            assert time.monotonic() < deadline, "no output was being written"
            time.sleep(0.05)
        size = partial.stat().st_size
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    print(f"\nSIGINT with {size} bytes written: exit {process.returncode}; {err.strip().splitlines()[-1]}")
    assert process.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert not target.exists() and not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]


def spec_of(backend: FakeBackend) -> EngineSpec:
    def build(stats: EngineStats, progress: Callable[[str], None] | None = None) -> EngineCore:
        return EngineCore(backend, stats)

    return EngineSpec(info=backend.info, build=build)


def test_a_failed_run_keeps_the_previous_output(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"the previous result")
    backend = FakeBackend(max_batch=1)
    backend.fail_next_step = RuntimeError("injected engine fault")
    with pytest.raises(RuntimeError, match="injected"):
        stylize_file(spec_of(backend), GOAT, target, "x")
    assert target.read_bytes() == b"the previous result"
    assert not partial_path(target).exists()


def test_a_finished_run_replaces_the_output(tmp_path):
    target = tmp_path / "out.mkv"
    target.write_bytes(b"the previous result")
    result = stylize_file(spec_of(FakeBackend(max_batch=4)), GOAT, target, "x")
    with av.open(str(target)) as out:
        assert "matroska" in out.format.name and sum(1 for _ in out.decode(video=0)) == result.frames > 0
    assert not partial_path(target).exists()


# ---- the wrapper and the favicon ------------------------------------------------------------


def test_scripts_livestyle_runs_the_venv_command_without_reinstalling(tmp_path):
    """scripts/livestyle with an environment already set up for this pyproject.toml: no pip,
    the venv's `livestyle` gets the arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    livestyle = venv / "bin" / "livestyle"
    livestyle.write_text(f'#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m server.cli "$@"\n')
    livestyle.chmod(0o755)
    project = subprocess.run(
        "sha256sum < pyproject.toml | cut -c1-16", shell=True, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    (venv / ".livestyle-setup").write_text(f"{project}|speed,diffusion,dev|torch==2.14.1 torchvision==0.29.1\n")
    done = subprocess.run(
        [str(ROOT / "scripts" / "livestyle"), "stylize", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVESTYLE_VENV": str(venv)},
    )
    assert done.returncode == 0, done.stderr
    assert "usage: livestyle stylize" in done.stdout
    assert "setup:" not in done.stderr  # nothing was installed


@pytest.mark.server
async def test_favicon_is_served(preview_server):
    from aiohttp import ClientSession

    _, base = await preview_server()
    async with ClientSession() as http:
        for path in ("/favicon.ico", "/static/favicon.svg"):
            async with http.get(base + path) as response:
                body = await response.read()
                assert response.status == 200 and response.content_type == "image/svg+xml", path
                assert body.startswith(b"<svg")
        async with http.get(base + "/") as response:
            assert '<link rel="icon" href="/static/favicon.svg"' in await response.text()
