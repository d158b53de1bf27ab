"""Which engine runs, and why: --engine auto|diffusion|preview with and without CUDA/weights."""

import pytest

from pipeline.config import ConfigError, EngineConfig
from pipeline.engines import EngineUnavailableAtStart, resolve_engine
from pipeline.stats import EngineStats

pytestmark = [pytest.mark.diffusion]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    # No hub traffic from tests: a miss must be decided locally and quickly. huggingface_hub
    # reads HF_HUB_OFFLINE once, at import, so the constant is patched too; the cache is empty.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))


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
    message = str(info.value)
    assert message.startswith("--engine diffusion cannot start: no CUDA device is available")
    assert "--device cpu" in message and "--engine preview" in message
    assert "using the CPU preview" not in message  # it refuses; it does not also claim to fall back


def test_a_model_folder_without_cuda_is_not_silently_replaced_by_the_preview(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "DreamLiteMobilePipeline"}')
    with pytest.raises(EngineUnavailableAtStart) as info:
        resolve_engine(EngineConfig(kind="auto", model=str(tmp_path)))
    assert f"--model {tmp_path} (a diffusion model) cannot start: no CUDA device" in str(info.value)


def test_a_model_path_that_does_not_exist_names_the_flag(tmp_path):
    missing = tmp_path / "no-such-model"
    for kind in ("auto", "diffusion"):
        with pytest.raises(ConfigError) as info:
            resolve_engine(EngineConfig(kind=kind, device="cpu", model=str(missing)))
        assert f"--model {missing}: no such directory" in str(info.value) and "tiny" in str(info.value)


def test_hub_weights_missing_offline_name_the_remedies():
    with pytest.raises(EngineUnavailableAtStart) as info:
        resolve_engine(EngineConfig(kind="diffusion", device="cpu"))
    message = str(info.value)
    assert "not available" in message and "HF_HUB_OFFLINE" in message
    assert "hf download carlofkl/DreamLite-mobile --revision diffusers" in message and "--engine preview" in message


def test_local_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(EngineUnavailableAtStart, match=r"model_index\.json is missing"):
        resolve_engine(EngineConfig(kind="diffusion", device="cpu", model=str(tmp_path)))


def test_cuda_device_index_beyond_the_machine_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EngineUnavailableAtStart, match=r"--device cuda:3: this machine has 1 CUDA device"):
        resolve_engine(EngineConfig(kind="diffusion", device="cuda:3", model="tiny"))


def test_tiny_model_runs_the_diffusion_engine_on_cpu():
    spec = resolve_engine(EngineConfig(kind="auto", model="tiny", max_batch=2))
    assert spec.info.kind == "diffusion" and spec.info.model == "tiny" and "cpu" in spec.info.reason
    progress: list[str] = []
    core = spec.build(EngineStats(), progress.append)
    assert core.info.kind == "diffusion"
    assert progress[0].startswith("loading tiny") and progress[-1].startswith("loaded tiny")
    core.close()
