"""Which engine runs, and why: --engine auto|diffusion|preview with and without CUDA/weights."""

import pytest

from pipeline.config import EngineConfig
from pipeline.engines import EngineUnavailableAtStart, resolve_engine

pytestmark = [pytest.mark.diffusion]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # No hub traffic from tests: a miss must be decided locally and quickly.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_preview_is_always_available():
    spec = resolve_engine(EngineConfig(kind="preview"))
    assert spec.info.kind == "preview" and "--engine preview" in spec.info.reason


def test_auto_without_cuda_falls_back_to_preview_and_says_why():
    spec = resolve_engine(EngineConfig(kind="auto"))  # this machine has no CUDA device
    assert spec.info.kind == "preview"
    assert "CUDA" in spec.info.reason and "preview" in spec.info.reason


def test_explicit_diffusion_without_cuda_fails_at_start_with_remedies():
    with pytest.raises(EngineUnavailableAtStart) as info:
        resolve_engine(EngineConfig(kind="diffusion"))
    assert "CUDA" in str(info.value)


def test_explicit_diffusion_with_missing_weights_names_the_remedies(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EngineUnavailableAtStart) as info:
        resolve_engine(EngineConfig(kind="diffusion", device="cpu", model=str(missing)))
    message = str(info.value)
    assert "not available" in message and "--model" in message and "--engine preview" in message


def test_local_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(EngineUnavailableAtStart, match=r"model_index\.json"):
        resolve_engine(EngineConfig(kind="diffusion", device="cpu", model=str(tmp_path)))


def test_tiny_model_runs_the_diffusion_engine_on_cpu():
    spec = resolve_engine(EngineConfig(kind="auto", model="tiny", max_batch=2))
    assert spec.info.kind == "diffusion" and spec.info.model == "tiny" and "cpu" in spec.info.reason
    core = spec.build(__import__("pipeline.stats", fromlist=["EngineStats"]).EngineStats(), lambda _msg: None)
    assert core.info.kind == "diffusion"
    core.close()
