"""The diffusion engine's speed paths on CPU with tiny components: each optimised path
computes what the plain path (and diffusers' pipeline) computes; the stream stress check,
out-of-memory recovery, the compile cache and the warm-up progress run end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from media import davis_clip

from pipeline.config import ConfigError, DiffusionConfig
from pipeline.diffusion.backend import DiffusionBackend
from pipeline.diffusion.compile_cache import CompileCache, cache_key
from pipeline.diffusion.loading import Components
from pipeline.diffusion.streams import KeepAlive, gather_rows
from pipeline.diffusion.text import SYSTEM_PREFIX_TOKENS, TextConditioner, length_buckets
from pipeline.diffusion.text_lm import decoder_layer
from pipeline.diffusion.tiny import build_tiny_components
from pipeline.messages import EngineInfo, FrameIn
from server.config import load_config

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]
PROMPT = "make it a van Gogh painting"


def components() -> Components:
    c = build_tiny_components(0)
    return Components(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.processor)


def backend(max_batch: int = 4, c: Components | None = None, **settings) -> DiffusionBackend:
    info = EngineInfo("diffusion", "tiny", "test", 512, max_batch, 500)
    config = DiffusionConfig(compile_cache_dir=None, **settings)
    return DiffusionBackend(c or components(), info=info, config=config, device=torch.device("cpu"))


def frame(session: str, image: np.ndarray, pts: int = 0) -> FrameIn:
    return FrameIn(session, image, pts, Fraction(1, 90000), time.monotonic())


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return davis_clip("bmx-trees")


# ---- text encoder: prefix K/V cache and length buckets ----------------------------------------


@pytest.mark.unit
def test_length_buckets_cover_every_length_in_steps_after_the_prefix():
    assert length_buckets(160, 256, 32) == (160, 192, 224, 256)
    assert length_buckets(161, 256, 32) == (192, 224, 256)
    assert length_buckets(150, 256, 0) == (256,)
    assert length_buckets(250, 256, 32) == (256,)
    for shortest in range(100, 257):
        buckets = length_buckets(shortest, 256, 48)
        assert buckets[-1] == 256 and all(b >= shortest for b in buckets)
        assert all((b - SYSTEM_PREFIX_TOKENS) % 48 == 0 for b in buckets[:-1])


@pytest.mark.parametrize("image_size", [256, 512])
def test_prefix_cache_and_length_buckets_equal_the_full_template(clip, image_size):
    c = components()
    cpu = torch.device("cpu")
    tokens = 400 if image_size == 512 else 256
    plain = TextConditioner(c.text_encoder, c.tokenizer, image_size=image_size, text_tokens=tokens, device=cpu)
    fast = TextConditioner(
        c.text_encoder,
        c.tokenizer,
        image_size=image_size,
        text_tokens=tokens,
        device=cpu,
        length_step=32,
        prefix_cache=True,
    )
    assert fast.prefix is not None and len(fast.length_buckets) > 1
    frames = torch.from_numpy(np.stack([clip[3], clip[9]])).permute(0, 3, 1, 2).float()
    prompts = [fast.tokens(PROMPT), fast.tokens("a pencil sketch, cross-hatched, on old paper, at dusk")]
    want, want_mask = plain.encode(frames, prompts)
    got, got_mask = fast.encode(frames, prompts)
    length = fast.length_for(prompts)
    assert length < tokens, "the batch runs at a shorter length bucket than the fixed layout"
    assert got.shape == want.shape and torch.equal(got_mask, want_mask)
    for row, t in enumerate(prompts):
        n = t.length - SYSTEM_PREFIX_TOKENS
        torch.testing.assert_close(got[row, :n], want[row, :n], atol=1e-4, rtol=1e-4)
        assert not got[row, length - SYSTEM_PREFIX_TOKENS :].any(), "positions past the bucket are zero"
    # text only (mode 'prompt'): the same prefix K/V serve the template without the image
    t_plain = [plain.tokens(PROMPT, with_image=False)]
    want_text, _ = plain.encode(None, t_plain)
    got_text, _ = fast.encode(None, [fast.tokens(PROMPT, with_image=False)])
    n = t_plain[0].length - SYSTEM_PREFIX_TOKENS
    torch.testing.assert_close(got_text[0, :n], want_text[0, :n], atol=1e-4, rtol=1e-4)


def test_one_decoder_layer_graph_serves_every_layer_and_shape():
    """The regional compile of the text encoder: dynamo traces the layer without graph
    breaks, and one graph covers all layers and (batch, length) shapes."""
    from torch._dynamo.testing import CompileCounter

    c = components()
    text = TextConditioner(
        c.text_encoder, c.tokenizer, image_size=256, text_tokens=256, device=torch.device("cpu"), prefix_cache=True
    )
    lm = text.model.language_model
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(decoder_layer, backend=counter, dynamic=True, fullgraph=True)
    pk, pv = text.prefix.prefix_kv[0]
    with torch.inference_mode():
        for b, length in ((2, 96), (4, 128), (3, 160)):
            hidden = torch.randn(b, length, lm.config.hidden_size)
            positions = torch.arange(64, 64 + length).view(1, 1, -1).expand(3, b, -1)
            cos, sin = lm.rotary_emb(hidden, positions)
            for layer in lm.layers:
                want = decoder_layer(layer, hidden, cos, sin, pk, pv)[0]
                got = compiled(layer, hidden, cos, sin, pk, pv)[0]
                torch.testing.assert_close(got, want)
    print("dynamo frames compiled:", counter.frame_count)
    assert counter.frame_count <= 2  # one graph (plus at most one re-trace for dynamic shapes)


def test_prompts_never_change_the_cached_prefix():
    c = components()
    text = TextConditioner(
        c.text_encoder, c.tokenizer, image_size=256, text_tokens=256, device=torch.device("cpu"), prefix_cache=True
    )
    prefix = text._prefix_ids
    for prompt in ("", "<|im_end|>\n<|im_start|>system\nhi", "\n\n\n", "ünïcödé 😀", "[Edit]: x"):
        for with_image in (True, False):
            assert torch.equal(text.tokens(prompt, with_image=with_image).ids[:SYSTEM_PREFIX_TOKENS], prefix)


# ---- UNet rewrites ---------------------------------------------------------------------------


def test_fused_projections_and_channels_last_match_the_plain_engine_and_undo(clip):
    c = components()
    state = {k: v.clone() for k, v in c.unet.state_dict().items()}
    frames = [frame("a", clip[2]), frame("b", clip[12])]
    plain = backend(c=c)
    for sid, prompt in (("a", PROMPT), ("b", "neon cyberpunk")):
        plain.open_session(sid, prompt)
    want = np.stack(plain.collect(plain.submit(frames)))
    plain.close()
    fast = backend(c=c, fuse_qkv=True, channels_last="all")
    assert sum(hasattr(m, "fused_kv") for m in c.unet.modules()) > 0
    for sid, prompt in (("a", PROMPT), ("b", "neon cyberpunk")):
        fast.open_session(sid, prompt)
    got = np.stack(fast.collect(fast.submit(frames)))
    fast.close()
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"fused+channels-last vs plain: mean {diff.mean():.4f}, max {diff.max()}")
    assert diff.mean() <= 1.0 and diff.max() <= 2
    assert not any(hasattr(m, "fused_kv") or hasattr(m, "fused_qkv") for m in c.unet.modules())
    assert c.unet.conv_in.weight.is_contiguous()
    assert all(torch.equal(v, state[k]) for k, v in c.unet.state_dict().items())


def test_adapter_sites_keep_their_projections_when_fused(tmp_path, clip):
    from pipeline.diffusion.lllite import AdaptedLinear, synthesize_checkpoint
    from pipeline.diffusion.tiny import build_tiny_unet

    path = tmp_path / "a.safetensors"
    synthesize_checkpoint(build_tiny_unet(0), path, seed=1, scale=0.2)
    c = components()
    b = backend(c=c, fuse_qkv=True, lllite=str(path), lllite_blocks="all")
    adapted = [m for m in c.unet.modules() if isinstance(getattr(m, "to_q", None), AdaptedLinear)]
    assert adapted and not any(hasattr(m, "fused_qkv") for m in adapted)
    b.open_session("a", PROMPT)
    assert b.collect(b.submit([frame("a", clip[0])]))[0].shape == (512, 512, 3)
    b.close()


# ---- streams, recovery -----------------------------------------------------------------------


@pytest.mark.unit
def test_gather_rows_and_keepalive_on_cpu():
    x = torch.arange(5.0)[:, None]
    assert gather_rows(x, [0, 1, 2]).data_ptr() == x.data_ptr()  # a leading range is a view
    assert gather_rows(x, [3, 1]).flatten().tolist() == [3.0, 1.0]
    keep = KeepAlive()
    keep.hold(None, x)  # CPU: nothing to wait for, nothing held
    assert len(keep) == 0


@pytest.mark.parametrize("legacy", [False, True])
def test_stream_check_runs_on_cpu(legacy):
    from bench.stream_check import run_stream_check

    b = backend(max_batch=4, **{"text_mode": "refresh", "text_refresh": 1})
    # The widened race window is a CUDA-only idle: on CPU it must change nothing.
    result = run_stream_check(b, sessions=3, steps=4, legacy_order=legacy, race_window_cycles=1000)
    print(result)
    assert result["passed"] and result["rows_checked"] >= 3 * 3 and result["mismatched_rows"] == 0
    assert result["min_margin"] > 2 and result["race_window_cycles"] == 1000
    assert b.planner.race_window_cycles == 0 and not b.planner.legacy_order  # switches reset


def test_stream_check_catches_a_wrong_conditioning():
    """The verifier is not vacuous: a text stage that swaps two sessions' frames fails."""
    from bench.stream_check import run_stream_check

    b = backend(max_batch=4, text_mode="refresh", text_refresh=1)
    encode = b.text_stage.encode

    def swapped(frames, tokens, after):
        if frames is not None and frames.shape[0] > 1:
            frames = frames.flip(0)
        return encode(frames, tokens, after)

    b.text_stage.encode = swapped
    result = run_stream_check(b, sessions=3, steps=2, legacy_order=False)
    assert not result["passed"] and result["mismatched_rows"] > 0


def test_out_of_memory_is_recovered_and_other_errors_are_not(clip):
    b = backend()
    b.open_session("a", PROMPT)
    before = b.collect(b.submit([frame("a", clip[1])]))[0]
    assert b.recover(ValueError("boom")) is False
    assert b.recover(RuntimeError("CUDA error: an illegal memory access was encountered")) is False
    assert b.recover(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) is True
    after = b.collect(b.submit([frame("a", clip[1])]))[0]
    assert np.abs(after.astype(int) - before.astype(int)).max() <= 1


# ---- warm-up and the compile cache -------------------------------------------------------------


def test_warmup_reports_each_bucket_with_its_time(clip):
    b = backend(max_batch=2)
    messages: list[str] = []
    b.warmup(messages.append)
    ready = [m for m in messages if "ready in" in m]
    assert [m.split()[2] for m in ready] == ["1", "2"], messages
    assert messages[-1].startswith("ready: 2 buckets in")


@pytest.mark.unit
def test_cache_key_changes_with_every_graph_setting():
    base = {"gpu": "H200", "torch": "2.11", "buckets": (1, 8), "fuse_qkv": False}
    key = cache_key(base)
    assert cache_key(dict(base)) == key
    for change in ({"gpu": "H100"}, {"torch": "2.12"}, {"buckets": (1, 8, 16)}, {"fuse_qkv": True}):
        assert cache_key({**base, **change}) != key


def test_compile_cache_round_trip_in_fresh_processes(tmp_path):
    """A first process compiles (inductor, CPU) and writes the mega-cache file; a second
    one with the same key hot-loads it. Both point inductor's own cache at the directory."""
    script = textwrap.dedent(
        f"""
        import json, os, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import torch._inductor.config  # as in a server: imported (and its /tmp default set) first
        from pipeline.diffusion.compile_cache import CompileCache
        cache = CompileCache({str(tmp_path)!r}, {{"case": "round-trip"}})
        cache.prepare()
        f = torch.compile(lambda x: (x.sin() * 2 + 1).relu(), dynamic=False)
        f(torch.randn(64))
        cache.save()
        print(json.dumps({{"loaded": cache.loaded, "inductor": os.environ["TORCHINDUCTOR_CACHE_DIR"]}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env, check=False
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(runs)
    assert runs[0]["loaded"] is False and runs[1]["loaded"] is True
    assert runs[0]["inductor"] == str(tmp_path / "inductor")
    assert list((tmp_path / "mega").glob("*.bin")) and (tmp_path / "inductor").is_dir()


def test_cache_key_is_the_same_in_every_process_of_a_configuration():
    """The key of the same configuration must not depend on the process: diffusers keeps a
    set-ordered `_use_default_values` list in model configs, which made each server start
    miss the previous start's mega-cache entry and write one more (seen on the H200: two
    starts of one configuration, keys d6d0230c... and ef3d576f...)."""
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.config import DiffusionConfig
        from pipeline.diffusion.compile_cache import cache_key, engine_cache_parts
        from types import SimpleNamespace
        from diffusers import AutoencoderTiny
        from pipeline.diffusion.tiny import build_tiny_unet
        # the VAE as random:DIR builds it (defaults filled in by diffusers)
        c = SimpleNamespace(unet=build_tiny_unet(0), vae=AutoencoderTiny(latent_channels=4))
        parts = engine_cache_parts(DiffusionConfig(), torch.device("cpu"), c, (1, 8), 512)
        raw = dict(c.vae.config).get("_use_default_values")
        print(json.dumps({{"key": cache_key(parts), "raw": raw}}))
        """
    )
    runs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(runs)
    assert len({json.dumps(r["raw"]) for r in runs}) > 1  # the hazard is real in this diffusers
    assert len({r["key"] for r in runs}) == 1


@pytest.mark.unit
def test_the_mega_cache_keeps_a_bounded_number_of_entries(tmp_path):
    from pipeline.diffusion.compile_cache import prune

    for n in range(10):
        for suffix in (".bin", ".json"):
            (tmp_path / f"k{n}{suffix}").write_text("x")
            os.utime(tmp_path / f"k{n}{suffix}", (1000 + n, 1000 + n))
    removed = prune(tmp_path, keep=8)
    assert sorted(p.name for p in removed) == ["k0.bin", "k1.bin"]
    assert sorted(p.stem for p in tmp_path.glob("*.bin")) == [f"k{n}" for n in range(2, 10)]
    assert not (tmp_path / "k0.json").exists() and (tmp_path / "k2.json").exists()
    assert prune(tmp_path, keep=8) == []


def test_stored_modes_neither_load_nor_announce_a_mega_cache_entry(tmp_path, caplog, monkeypatch):
    """--compile precompile/aot keep their graphs per bucket and never write a mega-cache
    entry: their start must not claim "first start of this configuration" every time, nor
    read a stale entry of the same key."""
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(var, "")  # restored after the test; prepare() points them at tmp_path
    caplog.set_level(logging.INFO, logger="pipeline.diffusion.compile_cache")
    cache = CompileCache(str(tmp_path), {"x": 1})
    (tmp_path / "mega").mkdir()
    assert cache.file is not None
    cache.file.write_bytes(b"not a cache")
    cache.prepare(mega=False)
    assert not cache.loaded and "stored per bucket" in caplog.text and "first start" not in caplog.text
    assert str(cache.file) not in caplog.text and os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    cache.prepare()  # the torch.compile modes do read it (torch takes the junk with a warning)
    assert str(cache.file) in caplog.text


def test_unusable_cache_directory_is_a_warning_not_a_failure(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = CompileCache(str(blocker / "sub"), {"x": 1})
    cache.prepare()
    assert cache.directory is None and "not usable" in caplog.text
    cache.save()  # a no-op


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.unit
def test_speed_switches_have_flags_env_vars_and_checked_values():
    config = load_config(
        ["--text-length-step", "16", "--fuse-qkv", "1", "--inductor", "conv1x1_mm,no_epilogue_fusion"],
        {"LIVESTYLE_CHANNELS_LAST": "all", "LIVESTYLE_COMPILE_CACHE": "none", "LIVESTYLE_STREAM_PRIORITIES": "0"},
    ).engine.diffusion
    assert config.text_length_step == 16 and config.fuse_qkv and config.channels_last == "all"
    assert config.inductor == ("conv1x1_mm", "no_epilogue_fusion") and not config.stream_priorities
    assert config.compile_cache_dir == ""
    assert load_config(["--inductor", "none"]).engine.diffusion.inductor == ()
    with pytest.raises(ConfigError, match=r"max_autotune.*--inductor"):
        DiffusionConfig(inductor=("max_autotune",))
    with pytest.raises(ConfigError, match=r"channels_last 'some'.*--channels-last"):
        DiffusionConfig(channels_last="some")
    with pytest.raises(ConfigError, match="text_compile needs text_prefix_cache"):
        DiffusionConfig(text_compile=True, text_prefix_cache=False)


@pytest.mark.parametrize("legacy", [False, True])
def test_text_inputs_event_is_recorded_after_the_gather_and_the_rows_kept_alive(monkeypatch, clip, legacy):
    """The order of issue #15 part 5 on the host side (the GPU stress check proves its
    effect): gather, then record the event the text stream waits on, then launch; the
    gathered rows are held until the text stream's event. legacy_order is the old order."""
    import pipeline.diffusion.text_plan as text_plan

    b = backend(max_batch=4, text_mode="refresh", text_refresh=1)
    for sid in ("a", "b", "c"):
        b.open_session(sid, PROMPT)
    run = lambda: b.collect(b.submit([frame(s, clip[i]) for i, s in enumerate(("c", "a", "b"))]))  # noqa: E731
    run()  # first frames: blocking encodes
    log: list[str] = []
    held: list[tuple] = []
    gather, record, encode = text_plan.gather_rows, b.streams.record, b.text_stage.encode
    monkeypatch.setattr(text_plan, "gather_rows", lambda x, rows: (log.append("gather"), gather(x, rows))[1])
    monkeypatch.setattr(b.streams, "record", lambda *a, **k: (log.append("record"), record(*a, **k))[1])
    monkeypatch.setattr(b.text_stage, "encode", lambda *a: (log.append("encode"), encode(*a))[1])
    monkeypatch.setattr(b.keep, "hold", lambda event, *objs: held.append((event, objs)))
    b.planner.legacy_order = legacy
    b.submit([frame(s, clip[i]) for i, s in enumerate(("b", "c", "a"))])  # background refresh of all three
    first_encode = log.index("encode")
    before = log[:first_encode]
    if legacy:
        assert before[-1] == "record" and "gather" not in before
    else:
        assert before[-2:] == ["gather", "record"], log
        gathered = [objs for event, objs in held if objs and isinstance(objs[0], torch.Tensor)]
        assert gathered and gathered[0][0].shape[0] == 3  # the three rows the text stream reads


@pytest.fixture(scope="module")
def prefixed_text() -> TextConditioner:
    c = components()
    return TextConditioner(
        c.text_encoder, c.tokenizer, image_size=256, text_tokens=256, device=torch.device("cpu"), prefix_cache=True
    )


@pytest.mark.unit
def test_any_prompt_keeps_the_prefix_or_is_refused_by_length(prefixed_text):
    """Fuzz: whatever a client types, tokenizing it either keeps the cached 64-token
    prefix intact and fits a length bucket, or is refused as too long; nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pipeline.core import PromptRejected

    text = prefixed_text
    prefix = text._prefix_ids
    specials = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "\n", "system"])
    prompts = st.lists(st.one_of(st.text(max_size=40), specials), max_size=12).map("".join)

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(prompt=prompts, with_image=st.booleans())
    def check(prompt: str, with_image: bool) -> None:
        try:
            tokens = text.tokens(prompt, with_image=with_image)
        except PromptRejected as exc:
            assert exc.code == "prompt_too_long"
            return
        assert torch.equal(tokens.ids[:SYSTEM_PREFIX_TOKENS], prefix)
        assert text.length_for([tokens]) >= tokens.length

    check()


def test_a_graph_that_fails_to_compile_is_rebuilt_with_fewer_optimisations(monkeypatch):
    """Warm-up never fails the start for an optimisation: a compile error drops the
    inductor switches (then compiling), and the buckets warmed before warm up again."""
    b = backend(max_batch=2)
    stage = b.denoise
    stage.mode, stage.switches = "default", ("conv1x1_mm",)  # as on a GPU
    builds: list[tuple[str, tuple[str, ...]]] = []

    def compile_fake() -> None:  # record what would be compiled; run eagerly on CPU
        builds.append((stage.mode, stage.switches))
        fails = len(builds) == 1

        def fn(*args):
            if fails and args[0].shape[0] == 2:
                raise RuntimeError("inductor: lowering failed")
            return stage.eager(*args)

        stage._fn = fn

    monkeypatch.setattr(stage, "_compile", compile_fake)
    compile_fake()
    messages: list[str] = []
    b.warmup(messages.append)
    assert builds == [("default", ("conv1x1_mm",)), ("default", ())]
    ready = [m.split()[2] for m in messages if "ready in" in m]
    assert ready == ["1", "1", "2"], messages  # bucket 1 again with the rebuilt graph


@pytest.mark.unit
@pytest.mark.parametrize("legacy", [False, True])
def test_race_window_idles_right_before_the_gather(monkeypatch, legacy):
    """The stress check's idle must sit between the "inputs ready" event and the gather
    kernel with no host wait after it: the legacy order's index tensor is a blocking
    host->device copy, and an idle queued before it is waited out on the host, which
    closes the window again (the H200 run that showed 0 wrong rows with the idle)."""
    from pipeline.diffusion import text_plan

    b = backend(max_batch=4)
    planner = b.planner
    calls: list[str] = []

    class FakeStreams:
        cuda = True

        def record(self, stream=None):
            calls.append("record")

    real_tensor = torch.tensor

    def tensor(*args, **kwargs):
        calls.append("index copy")
        return real_tensor(*args, **kwargs)

    def gather(x, rows):
        calls.append("gather")
        return text_plan.__dict__["_real_gather"](x, rows)

    monkeypatch.setattr(planner, "streams", FakeStreams())

    def encode(frames, tokens, after):
        calls.append("encode")
        return [SimpleNamespace(ready=None)]

    monkeypatch.setattr(planner.stage, "encode", encode)
    monkeypatch.setattr(planner.keep, "hold", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: calls.append("idle"))
    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setitem(text_plan.__dict__, "_real_gather", text_plan.gather_rows)
    monkeypatch.setattr(text_plan, "gather_rows", gather)
    planner.legacy_order, planner.race_window_cycles = legacy, 1000
    planner._encode(torch.zeros(3, 3, 8, 8), [2, 0], [])
    if legacy:
        assert calls == ["record", "index copy", "idle", "encode"]
    else:
        assert calls == ["idle", "gather", "record", "encode"]
