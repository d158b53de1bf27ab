"""GPU-only checks (skipped without CUDA): the lead runs them on the device with
`python -m pytest tests/test_gpu.py -m gpu` or directly `python -m bench.gpu_check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.timeout(900),
]
REPO = Path(__file__).resolve().parents[1]


def test_every_gpu_check_passes(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(out)], cwd=REPO, timeout=880, check=False
    )
    results = json.loads(out.read_text())
    failed = {k: v for k, v in results.items() if isinstance(v, dict) and v.get("status") == "FAIL"}
    assert run.returncode == 0 and not failed, failed
