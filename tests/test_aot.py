"""compile='aot' (pipeline/diffusion/aot.py) on CPU: AOTInductor packages built once, loaded
by a later store without tracing, reading the live module's tensors in place, rebuilt
when damaged, bounded on disk; a failing package falls back to torch.compile."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from gated_module import Gated, inputs

from pipeline.config import DiffusionConfig
from pipeline.diffusion import aot
from pipeline.diffusion.aot import AotBuckets, AotStore, AotUnavailable, prune
from pipeline.diffusion.denoise_stage import DenoiseStage
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.tiny import build_tiny_unet, build_tiny_vae

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One package for bucket 2 (each AOTInductor build compiles C++: tens of seconds)."""
    directory = tmp_path_factory.mktemp("aot") / "packages"
    module = Gated().eval()
    buckets = AotBuckets(module, AotStore(directory, "key"), {}, cuda=False)
    with torch.inference_mode():
        buckets(*inputs())
    assert buckets.built == [2]
    return directory


def copy_store(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "packages"
    shutil.copytree(built, target)
    return target


def test_a_later_store_loads_the_package_without_tracing(built: Path, tmp_path: Path, monkeypatch) -> None:
    directory = copy_store(built, tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["key-b2.json", "key-b2.pt2"]

    def no_export(*args, **kwargs):
        raise AssertionError("a cached package must not be traced again")

    monkeypatch.setattr(torch.export, "export", no_export)
    module = Gated().eval()
    buckets = AotBuckets(module, AotStore(directory, "key"), {}, cuda=False)
    with torch.inference_mode():
        got, want = buckets(*inputs()), module(*inputs())
    assert buckets.built == []
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_loaded_graph_reads_the_modules_tensors_in_place(built: Path, tmp_path: Path) -> None:
    """The adapter writes its buffers between steps; a copy (or literals compiled into the
    code, which inductor does for small tensors) would keep serving the old values."""
    module = Gated().eval()
    buckets = AotBuckets(module, AotStore(copy_store(built, tmp_path), "key"), {}, cuda=False)
    with torch.inference_mode():
        before = buckets(*inputs())
        module.gate.mul_(3.0)
        module.bias_map.add_(1.0)
        module.lin.weight.mul_(0.5)
        after, want = buckets(*inputs()), module(*inputs())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    package = json.loads((tmp_path / "packages" / "key-b2.json").read_text())
    assert package["buffers"] == ["bias_map", "gate"]


def test_a_damaged_package_is_built_again(built: Path, tmp_path: Path, caplog) -> None:
    directory = copy_store(built, tmp_path)
    (directory / "key-b2.pt2").write_bytes(b"not a zip archive")
    module = Gated().eval()
    buckets = AotBuckets(module, AotStore(directory, "key"), {}, cuda=False)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        got, want = buckets(*inputs()), module(*inputs())
    assert buckets.built == [2]
    assert "could not be loaded" in caplog.text
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not list(directory.glob(".tmp-*")), "the temporary package was renamed into place"


def test_a_package_that_inlined_a_buffer_is_refused(built: Path, tmp_path: Path) -> None:
    """If the graph read a buffer it does not take from the module, its writes would be
    lost: the load says so (the engine then compiles with torch.compile)."""
    directory = copy_store(built, tmp_path)
    meta = directory / "key-b2.json"
    meta.write_text(json.dumps({"buffers": ["bias_map", "gate", "adapter_cond"]}))
    with pytest.raises(AotUnavailable, match="adapter_cond"):
        AotStore(directory, "key").load(Gated().eval(), 2)


def test_a_package_that_crashes_its_loader_is_never_loaded_here(built: Path, tmp_path: Path, monkeypatch) -> None:
    """On the H200 (torch 2.11) one packaging crashed the loading process (SIGSEGV): a new
    package is loaded in a child first, and one that takes the child down is dropped with
    an error the engine falls back on, instead of the crash reaching the engine."""
    monkeypatch.setattr(aot, "CHECK_SOURCE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    package = copy_store(built, tmp_path) / "key-b2.pt2"
    with pytest.raises(AotUnavailable, match="signal 11"):
        aot.check_in_child(package)
    directory = tmp_path / "fresh"
    store = AotStore(directory, "key")
    with pytest.raises(AotUnavailable, match="failed in a child process"):
        store.build(Gated().eval(), inputs(), {})
    assert not store.cached(2) and list(directory.iterdir()) == [], "nothing of the crashing package is kept"


def test_packages_on_disk_are_bounded(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"k-b{i}.pt2").write_bytes(b"x")
        (tmp_path / f"k-b{i}.json").write_text("{}")
        stamp = 1_000_000 + i
        os.utime(tmp_path / f"k-b{i}.pt2", (stamp, stamp))
    (tmp_path / ".tmp-7-k-b9.pt2").write_bytes(b"a build under way")
    removed = prune(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == ["k-b0.pt2", "k-b1.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".tmp-7-k-b9.pt2"] + [f"k-b{i}.{ext}" for i in (2, 3, 4) for ext in ("pt2", "json")]
    )


def test_a_store_without_a_directory_cleans_up(tmp_path: Path) -> None:
    store = AotStore(None, "key")
    assert store.directory.is_dir()
    store.close()
    assert not store.directory.exists()


def test_a_failed_package_falls_back_to_torch_compile(monkeypatch, caplog) -> None:
    """DenoiseStage in aot mode (cuda=True only selects the mode; nothing runs on a GPU):
    a failure while building (export, inductor, an old torch) degrades to reduce-overhead,
    the same graph by the other route, instead of failing the start."""
    unet, vae = build_tiny_unet(0), build_tiny_vae(0)
    schedule = FlowSchedule((1.0, 0.0), (1000.0,))
    stage = DenoiseStage(unet, vae, schedule, 64, DiffusionConfig(compile="aot"), cuda=True)
    try:
        assert stage.mode == "aot" and isinstance(stage.aot, AotBuckets)
        monkeypatch.setattr(aot, "_check_torch", lambda: (_ for _ in ()).throw(AotUnavailable("old torch")))
        with pytest.raises(AotUnavailable):
            stage.aot.store.build(stage.eager, (torch.zeros(1),), {})
        with caplog.at_level(logging.WARNING):
            assert stage.degrade(AotUnavailable("old torch"))
        assert stage.mode == "reduce-overhead" and stage.aot is None
        assert "compiling with torch.compile instead" in caplog.text
    finally:
        stage.close()
