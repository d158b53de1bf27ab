"""compile='precompile' (pipeline/diffusion/precompile.py) on CPU: a graph saved once is
loaded by a later process without tracing, reads the live module's tensors, is built
again when damaged or when a function it traced changed; torch 2.11's guard-source
pickling is repaired; the engine warms up from the store and falls back to torch.compile."""

from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gated_module import inputs

from pipeline.config import DiffusionConfig
from pipeline.diffusion.aot import AotBuckets, AotUnavailable
from pipeline.diffusion.denoise_stage import DenoiseStage
from pipeline.diffusion.precompile import PrecompileStore, SourceChanged, repair_source_pickling
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.tiny import build_tiny_unet, build_tiny_vae

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent

# The module in a file of its own (a copy of tests/gated_module.py), so that a test can
# change its source as an upgrade would.
GATED_SOURCE = (Path(__file__).parent / "gated_module.py").read_text()


@pytest.fixture(scope="module")
def gated_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("gated_module")
    (directory / "gated_mod.py").write_text(GATED_SOURCE)
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))
    sys.modules.pop("gated_mod", None)


def gated():
    import gated_mod

    return gated_mod.Gated().eval()


@pytest.fixture(scope="module")
def built(gated_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One saved graph for bucket 2 (a CPU inductor compile: tens of seconds)."""
    directory = tmp_path_factory.mktemp("precompile") / "graphs"
    buckets = AotBuckets(gated(), PrecompileStore(directory, "key"), {}, cuda=False)
    with torch.inference_mode():
        buckets(*inputs())
    assert buckets.built == [2]
    assert sorted(p.name for p in directory.iterdir()) == ["key-b2.bin"]
    return directory


def copy_store(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "graphs"
    shutil.copytree(built, target)
    return target


LOAD_IN_CHILD = """
import sys, torch
sys.path[:0] = [{root!r}, {gated!r}]
import torch._dynamo.aot_compile as aot_compile
from torch._dynamo.utils import counters

def no_tracing(*args, **kwargs):
    raise AssertionError("a saved graph must not be traced again")

aot_compile.aot_compile_fullgraph = no_tracing
from pathlib import Path
from pipeline.diffusion.aot import AotBuckets
from pipeline.diffusion.precompile import PrecompileStore
import gated_mod

module = gated_mod.Gated().eval()
buckets = AotBuckets(module, PrecompileStore(Path({store!r}), "key"), {{}}, cuda=False)
with torch.inference_mode():  # as the engine calls it (and as it was traced: dynamo guards the dispatch keys)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    got, want = buckets(x), module(x)
    module.gate.mul_(3.0)
    after, want_after = buckets(x), module(x)
assert buckets.built == [], buckets.built
assert not counters["stats"]["unique_graphs"], dict(counters["stats"])
torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(after, want_after, rtol=1e-5, atol=1e-5)
assert not torch.allclose(got, after)
print("loaded without tracing")
"""


def test_a_later_process_loads_the_graph_without_tracing(built: Path, gated_dir: Path, tmp_path: Path) -> None:
    """The restart case: a new interpreter, a new module object with the same weights;
    dynamo must not run, and the graph must serve the module's current buffers."""
    store = copy_store(built, tmp_path)
    script = LOAD_IN_CHILD.format(root=str(ROOT), gated=str(gated_dir), store=str(store))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded without tracing" in done.stdout


def test_the_loaded_graph_reads_the_modules_tensors_in_place(built: Path, tmp_path: Path) -> None:
    module = gated()
    buckets = AotBuckets(module, PrecompileStore(copy_store(built, tmp_path), "key"), {}, cuda=False)
    with torch.inference_mode():
        before = buckets(*inputs())
        module.gate.mul_(3.0)
        module.bias_map.add_(1.0)
        module.lin.weight.mul_(0.5)
        after, want = buckets(*inputs()), module(*inputs())
    assert buckets.built == []
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)


def test_a_damaged_file_is_built_again(built: Path, tmp_path: Path, caplog) -> None:
    directory = copy_store(built, tmp_path)
    (directory / "key-b2.bin").write_bytes(b"not a pickle")
    module = gated()
    buckets = AotBuckets(module, PrecompileStore(directory, "key"), {}, cuda=False)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        got, want = buckets(*inputs()), module(*inputs())
    assert buckets.built == [2]
    assert "precompiled graph for bucket 2 could not be loaded" in caplog.text
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not list(directory.glob(".tmp-*")), "the temporary file was renamed into place"


def test_a_graph_whose_guards_refuse_the_engines_inputs_is_built_again(built: Path, tmp_path: Path, caplog) -> None:
    """The graph was traced on inference tensors; called with ordinary ones its guards
    fail. That must rebuild the bucket at warm-up, not fail a step later."""
    module = gated()
    buckets = AotBuckets(module, PrecompileStore(copy_store(built, tmp_path), "key"), {}, cuda=False)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        got = buckets(*inputs())
        torch.testing.assert_close(got, module(*inputs()), rtol=1e-5, atol=1e-5)
    assert buckets.built == [2]
    assert "GuardManager check failed" in caplog.text


def test_a_graph_is_built_again_when_a_function_it_traced_changed(
    built: Path, gated_dir: Path, tmp_path: Path, caplog
) -> None:
    """The identity guards are dropped to make the graph savable; without the source
    check an upgrade of our code (or diffusers') would keep serving the old graph."""
    directory = copy_store(built, tmp_path)
    source = gated_dir / "gated_mod.py"
    try:
        source.write_text(GATED_SOURCE.replace("* self.scale +", "* self.scale * 2.0 +"))
        with pytest.raises(SourceChanged, match="gated_mod lines"):
            PrecompileStore(directory, "key").load(gated(), 2)
        # The module object in memory is the old code; a rebuilt graph follows the object.
        buckets = AotBuckets(gated(), PrecompileStore(directory, "key"), {}, cuda=False)
        with caplog.at_level(logging.WARNING), torch.inference_mode():
            buckets(*inputs())
        assert buckets.built == [2] and "changed since the graph was saved" in caplog.text
    finally:
        source.write_text(GATED_SOURCE)


def test_guard_sources_pickle_with_their_init_fields_only(monkeypatch) -> None:
    """torch 2.11 pickled every field of dynamo's guard sources, including computed ones,
    so a saved graph that guarded a function default could not be loaded; the repair
    gives such classes the later rule, and leaves sound classes alone."""
    import dataclasses

    from torch._dynamo.source import DefaultsSource, LocalSource

    def all_fields_reduce(self):  # torch 2.11's rule
        return self.__class__, tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    monkeypatch.setattr(DefaultsSource, "__reduce__", all_fields_reduce)
    source = DefaultsSource(LocalSource("fn"), 0)
    with pytest.raises(TypeError, match="positional argument"):
        pickle.loads(pickle.dumps(source))
    assert repair_source_pickling() == ["DefaultsSource"]
    assert pickle.loads(pickle.dumps(source)) == source
    assert repair_source_pickling() == []


def test_a_torch_without_precompile_falls_back_to_torch_compile(monkeypatch, caplog) -> None:
    """DenoiseStage in precompile mode (cuda=True only selects the mode; nothing runs on a
    GPU): a torch without dynamo precompile degrades to reduce-overhead."""
    unet, vae = build_tiny_unet(0), build_tiny_vae(0)
    schedule = FlowSchedule((1.0, 0.0), (1000.0,))
    stage = DenoiseStage(unet, vae, schedule, 64, DiffusionConfig(compile="precompile"), cuda=True)
    try:
        assert stage.mode == "precompile" and isinstance(stage.aot, AotBuckets)
        assert isinstance(stage.aot.store, PrecompileStore)
        monkeypatch.delattr(torch.compiler, "load_compiled_function")
        with pytest.raises(AotUnavailable, match="no dynamo precompile"):
            stage.aot.store.build(stage.eager, (torch.zeros(1),), {})
        with caplog.at_level(logging.WARNING):
            assert stage.degrade(AotUnavailable("old torch"))
        assert stage.mode == "reduce-overhead" and stage.aot is None
        assert "precompiled graph failed" in caplog.text
    finally:
        stage.close()


def test_the_engine_warms_up_from_saved_graphs(tmp_path: Path, monkeypatch) -> None:
    """The whole path on the tiny engine: the first start saves its bucket under the
    compile cache, a second engine loads it without tracing (and says so in its warm-up
    progress), and both stylize a frame within one uint8 level of the eager engine."""
    from test_diffusion import backend, frame, run

    settings = {"compile": "precompile", "compile_cache_dir": str(tmp_path / "cache"), "buckets": (1,)}
    image = np.random.default_rng(1).integers(0, 255, (512, 512, 3), dtype=np.uint8)

    def start(expect_built: list[int]) -> tuple[list[str], np.ndarray, np.ndarray]:
        engine = backend(max_batch=1, **settings)
        try:
            progress: list[str] = []
            engine.warmup(progress.append)
            assert engine.denoise.mode == "precompile" and engine.denoise.aot is not None
            assert engine.denoise.aot.built == expect_built
            engine.open_session("s", "make it a van Gogh painting")
            got = run(engine, [frame("s", image)])[0]
            with engine.denoise.eager_only():  # the same first frame of a new session
                engine.close_session("s")
                engine.open_session("s", "make it a van Gogh painting")
                want = run(engine, [frame("s", image)])[0]
            return progress, got, want
        finally:
            engine.close()

    first, got, want = start([1])
    assert "first start, building a precompiled graph" in first[0]
    assert list((tmp_path / "cache" / "precompiled").glob("*-b1.bin"))

    import torch._dynamo.aot_compile as aot_compile

    monkeypatch.setattr(aot_compile, "aot_compile_fullgraph", lambda *a, **k: pytest.fail("traced again"))
    second, got2, want2 = start([])
    assert second[0] == "batch bucket 1 (1/1): loading (compile=precompile, cached precompiled graph)"
    for out, ref in ((got, want), (got2, want2)):
        diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
        assert diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())
    np.testing.assert_array_equal(got, got2)


def test_the_vae_encoders_graph_is_saved_and_loaded_without_tracing(tmp_path: Path, monkeypatch) -> None:
    """compile='precompile' also stores the side stream's VAE-encoder graph per bucket (a
    torch.compile start traces it again for every bucket)."""
    from pipeline.diffusion.stages import EncodeReference, encode_reference

    vae = build_tiny_vae(0)
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    first = AotBuckets(EncodeReference(vae), PrecompileStore(tmp_path, "k-encode"), {}, cuda=False)
    with torch.inference_mode():
        built = first(frames)
    assert first.built == [2] and (tmp_path / "k-encode-b2.bin").is_file()

    import torch._dynamo.aot_compile as aot_compile

    monkeypatch.setattr(aot_compile, "aot_compile_fullgraph", lambda *a, **k: pytest.fail("traced again"))
    again = AotBuckets(EncodeReference(vae), PrecompileStore(tmp_path, "k-encode"), {}, cuda=False)
    with torch.inference_mode():
        loaded = again(frames)
    assert again.built == []
    want = encode_reference(vae, frames)
    torch.testing.assert_close(built, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded, built, rtol=0, atol=0)


def test_a_failing_encoder_store_falls_back_to_torch_compile(monkeypatch, caplog) -> None:
    """The VAE encoder's stored graph failing (an old torch, a save error) must cost the
    torch.compile route, not the CUDA graph: eager launches cost the engine thread several
    ms per step. cuda is only named here: capture is faked to one call on the CPU."""
    from pipeline.diffusion import stages

    captured: list[object] = []

    class FakeGraphedCall:
        def __init__(self, fn, inputs):
            fn(*inputs)
            captured.append(fn)

    monkeypatch.setattr(stages, "GraphedCall", FakeGraphedCall)
    fallback = object()

    def torch_compiled(self):
        def run(frames):
            return frames

        run.marker = fallback  # type: ignore[attr-defined]
        return run

    monkeypatch.setattr(stages.ReferenceEncoder, "_torch_compiled", torch_compiled)
    monkeypatch.delattr(torch.compiler, "load_compiled_function")  # the store cannot work
    encoder = stages.ReferenceEncoder(build_tiny_vae(0), torch.device("cuda"), True, PrecompileStore(None, "k"))
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        encoder.capture(torch.zeros(1, 3, 64, 64))
    assert "VAE-encoder precompiled graph failed" in caplog.text
    assert getattr(captured[-1], "marker", None) is fallback
    encoder.close()
