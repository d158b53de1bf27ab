"""`python -m bench.transport`: every results file names the source it measured (git commit
and local changes), and the tables it renders into docs/transport.md say so."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from bench import transport
from bench.provenance import REPO

pytestmark = [pytest.mark.unit, pytest.mark.timeout(300)]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def write_clip(path, frames: int = 4, size: int = 64) -> None:
    """A tiny clip, so that a full `encode` run takes a second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for n in range(frames):
            image = np.full((size, size, 3), 40 * n, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_an_encode_results_file_records_the_commit_and_the_docs_line_names_it(tmp_path, monkeypatch):
    clip, out = tmp_path / "clip.mp4", tmp_path / "results" / "encode.json"
    write_clip(clip)
    frames = transport.KEYFRAME_EVERY + 6  # the keyframe mean needs a second keyframe
    argv = ["encode", "--frames", str(frames), "--clip", str(clip), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["python -m bench.transport", *argv])
    transport.main()
    report = json.loads(out.read_text())

    head = git("rev-parse", "HEAD").strip()
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    assert report["git"]["commit"] == head
    assert report["git"]["dirty"] == bool(changed)
    assert report["command"] == "python -m bench.transport " + " ".join(argv)
    assert report["machine"]["aiortc"] == "1.16.0" and report["machine"]["av"] == av.__version__
    assert report["encode"]["frames"] == frames

    monkeypatch.setattr(transport, "REPO", tmp_path)  # the docs line names the file relative to the repo
    clean = {**report, "git": {"commit": head, "dirty": False, "changed": []}}
    line = transport._where(out, clean)
    assert line.startswith("`results/encode.json`: `python -m bench.transport encode ")
    assert f"at commit `{head[:7]}` on " in line and "local changes" not in line
    dirty = {**report, "git": {"commit": head, "dirty": True, "changed": ["bench/transport.py"]}}
    assert f"at commit `{head[:7]}` with local changes on " in transport._where(out, dirty)
    older = {k: v for k, v in report.items() if k != "git"}  # files written before the git record
    assert "at commit not recorded on " in transport._where(out, older)
    print(line)
