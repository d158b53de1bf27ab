"""Temporal ControlNet-LLLite adapter: checkpoint layout, fused formulation, compile
friendliness, refresh schedule and the scene-cut detector (CPU, tiny UNet)."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from media import DAVIS_DIR, davis_clip
from safetensors.torch import save_file

from pipeline.config import DiffusionConfig
from pipeline.diffusion.backend import DiffusionBackend
from pipeline.diffusion.lllite import (
    AdapterBank,
    AdapterFormatError,
    LLLiteModule,
    conv_strides,
    expected_state,
    host_names,
    load_adapter,
    synthesize_checkpoint,
)
from pipeline.diffusion.loading import Components
from pipeline.diffusion.tiny import build_tiny_components, build_tiny_unet
from pipeline.messages import EngineInfo, FrameIn
from pipeline.temporal import SceneCutDetector, warp_previous_output

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(300)]
REFERENCE = DAVIS_DIR.parents[1] / "reference"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lllite") / "tiny_lllite.safetensors"
    synthesize_checkpoint(build_tiny_unet(0), path, seed=1, scale=0.2)  # large enough to matter
    return path


def unet_inputs(b: int = 2):
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(b, 4, 64, 128, generator=g)
    cond = torch.randn(b, 12, 32, generator=g)
    return sample, torch.full((b,), 1000.0), cond, torch.ones(b, 12, dtype=torch.long)


def run_unet(unet, sample, t, cond, mask):
    with torch.no_grad():
        return unet(
            sample,
            t,
            encoder_hidden_states=cond,
            encoder_attention_mask=mask,
            added_cond_kwargs={"time_ids": torch.tensor([[512.0, 512.0]])},
            return_dict=False,
        )[0]


def test_strides_and_full_size_key_layout():
    assert conv_strides(64) == [4, 2] and conv_strides(32) == [4, 4] and conv_strides(16) == [4, 4, 2]
    from diffusers import DreamLiteUNetModel

    config = json.loads((REFERENCE / "dreamlite_mobile_unet_config.json").read_text())
    with torch.device("meta"):
        unet = DreamLiteUNetModel.from_config(config)
    assert len(host_names(unet, "all")) == 108 and len(host_names(unet, "down_blocks")) == 38
    keys = expected_state(unet, "all")
    q = "modules_dict.down_blocks__2__attentions__0__transformer_blocks__0__attn1__to_q"
    assert keys[f"{q}.down.0.weight"] == (64, 896) and keys[f"{q}.mid.0.weight"] == (64, 96)
    assert keys[f"{q}.up.0.weight"] == (896, 64)
    assert keys[f"{q}.conditioning1.0.weight"] == (16, 3, 4, 4)  # 16x32 feature: strides 4, 4, 2
    assert keys[f"{q}.conditioning1.4.weight"] == (32, 16, 2, 2)
    d0 = "modules_dict.down_blocks__0__attentions__0__transformer_blocks__0__attn2__to_q"
    assert keys[f"{d0}.conditioning1.2.weight"] == (32, 16, 2, 2) and f"{d0}.conditioning1.4.weight" not in keys
    params = {k.rsplit(".", 3)[0] for k in keys}
    assert len(params) == 108
    assert all(k.startswith("modules_dict.") for k in keys)


def test_synthesised_full_size_checkpoint_loads_108_or_38(tmp_path):
    from diffusers import DreamLiteUNetModel

    config = json.loads((REFERENCE / "dreamlite_mobile_unet_config.json").read_text())
    with torch.device("meta"):
        unet = DreamLiteUNetModel.from_config(config)
    path = tmp_path / "v3.safetensors"
    assert synthesize_checkpoint(unet, path) == 108
    assert len(load_adapter(path, unet, "all").modules) == 108
    subset = load_adapter(path, unet, "down_blocks")
    assert len(subset.modules) == 38 and subset.ignored_keys > 0
    assert subset.metadata["kind"] == "temporal_lllite"


def test_mismatched_files_get_clear_errors(tmp_path, tiny_checkpoint):
    unet = build_tiny_unet(0)
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    some = next(k for k in tensors if k.endswith("up.0.weight"))

    bad_shape = dict(tensors)
    bad_shape[some] = torch.zeros(3, 3)
    save_file(bad_shape, str(tmp_path / "shape.safetensors"), metadata=metadata)
    with pytest.raises(AdapterFormatError, match="has shape"):
        load_adapter(tmp_path / "shape.safetensors", unet, "all")

    missing = {k: v for k, v in tensors.items() if k != some}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(AdapterFormatError, match="missing key"):
        load_adapter(tmp_path / "missing.safetensors", unet, "all")

    save_file(tensors, str(tmp_path / "kind.safetensors"), metadata={**metadata, "kind": "lora"})
    with pytest.raises(AdapterFormatError, match="temporal_lllite"):
        load_adapter(tmp_path / "kind.safetensors", unet, "all")

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFormatError, match="not a safetensors"):
        load_adapter(tmp_path / "junk.safetensors", unet, "all")
    with pytest.raises(AdapterFormatError, match="does not exist"):
        load_adapter(tmp_path / "nope.safetensors", unet, "all")


def reference_hooks(unet, loaded, images: torch.Tensor, multiplier: float):
    """The straightforward formulation: forward pre-hooks that add the adapter delta to the
    host Linear's input, conditioning computed from the image on the fly."""
    handles = []
    for name, module in loaded.modules.items():
        host = unet.get_submodule(name)
        emb = module.embed(images)

        def pre(_mod, args, module=module, emb=emb):
            (x,) = args
            h = module.down(x)
            return (x + multiplier * module.up(module.mid(torch.cat([emb, h], dim=-1))),)

        handles.append(host.register_forward_pre_hook(pre))
    return handles


def test_fused_formulation_equals_the_reference(tiny_checkpoint):
    images = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(5)) * 2 - 1
    inputs = unet_inputs(2)
    plain = build_tiny_unet(0).eval()
    base = run_unet(plain, *inputs)

    ref_unet = build_tiny_unet(0).eval()
    loaded = load_adapter(tiny_checkpoint, ref_unet, "all")
    handles = reference_hooks(ref_unet, loaded, images, 0.8)
    expected = run_unet(ref_unet, *inputs)
    for h in handles:
        h.remove()

    fused = build_tiny_unet(0).eval()
    bank = AdapterBank(fused, load_adapter(tiny_checkpoint, fused, "all"), max_batch=4)
    per_site = bank.embed(images)
    bank.write_rows([[e[i] for e in per_site] for i in range(2)], [0.8, 0.8])
    got = run_unet(fused, *inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the adapter really changes the output
    bank.write_rows([[e[i] for e in per_site] for i in range(2)], [0.0, 0.0])
    torch.testing.assert_close(run_unet(fused, *inputs), base)  # strength 0 = no adapter


def test_rows_use_their_own_conditioning_and_strength(tiny_checkpoint):
    images = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(6)) * 2 - 1
    sample, t, cond, mask = unet_inputs(2)
    fused = build_tiny_unet(0).eval()
    bank = AdapterBank(fused, load_adapter(tiny_checkpoint, fused, "down_blocks"), max_batch=4)
    per_site = bank.embed(images)
    rows = [[e[i] for e in per_site] for i in range(2)]
    bank.write_rows(rows, [1.0, 0.3])
    both = run_unet(fused, sample, t, cond, mask)
    bank.write_rows(rows[1:], [0.3])
    second_alone = run_unet(fused, sample[1:], t[1:], cond[1:], mask[1:])
    torch.testing.assert_close(both[1:], second_alone, atol=1e-5, rtol=1e-5)


def test_compiles_as_one_graph_and_replays_see_refreshed_buffers(tiny_checkpoint):
    fused = build_tiny_unet(0).eval()
    bank = AdapterBank(fused, load_adapter(tiny_checkpoint, fused, "down_blocks"), max_batch=2)
    images = torch.rand(4, 3, 512, 512, generator=torch.Generator().manual_seed(7)) * 2 - 1
    per_site = bank.embed(images)
    first, second = [[e[i] for e in per_site] for i in (0, 1)], [[e[i] for e in per_site] for i in (2, 3)]
    inputs = unet_inputs(2)
    bank.write_rows(first, [1.0, 1.0])

    def forward(sample, t, cond, mask):
        return fused(
            sample,
            t,
            encoder_hidden_states=cond,
            encoder_attention_mask=mask,
            added_cond_kwargs={"time_ids": torch.tensor([[512.0, 512.0]])},
            return_dict=False,
        )[0]

    with torch.no_grad():
        explanation = torch._dynamo.explain(forward)(*inputs)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
        out_first = compiled(*inputs)
        torch.testing.assert_close(out_first, forward(*inputs))
        bank.write_rows(second, [1.0, 1.0])  # refresh in place: no recompile, new values seen
        out_second = compiled(*inputs)
        torch.testing.assert_close(out_second, forward(*inputs))
    assert (out_second - out_first).abs().max() > 1e-4


def test_scene_cut_detector_fires_on_cuts_only():
    a, b = davis_clip("blackswan"), davis_clip("dance-twirl")
    detector = SceneCutDetector()
    fired = [i for i, f in enumerate(a + b) if detector.update(f)]
    assert fired == [len(a)]
    for name in ("scooter-black", "bmx-trees"):  # fast motion inside one shot
        detector = SceneCutDetector()
        assert not any(detector.update(f) for f in davis_clip(name))


def test_warp_follows_motion():
    clip = davis_clip("bmx-trees")
    still = warp_previous_output(clip[0], clip[0], clip[0])
    assert np.abs(still.astype(int) - clip[0].astype(int)).mean() < 1.0
    # Warping frame t onto t+1 lands closer to t+1 than not warping at all.
    warped = warp_previous_output(clip[10], clip[10], clip[11])
    err = lambda x: np.abs(x.astype(int) - clip[11].astype(int)).mean()  # noqa: E731
    assert err(warped) < err(clip[10])


def backend_with(checkpoint: Path | None, **settings) -> DiffusionBackend:
    c = build_tiny_components(0)
    components = Components(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.processor)
    config = DiffusionConfig(lllite=str(checkpoint) if checkpoint else None, text_mode="once", **settings)
    info = EngineInfo("diffusion", "tiny", "test", 512, 2, 500)
    return DiffusionBackend(components, info=info, config=config, device=torch.device("cpu"))


def step(b: DiffusionBackend, sid: str, image: np.ndarray) -> np.ndarray:
    return b.collect(b.submit([FrameIn(sid, image, 0, Fraction(1, 90000), time.monotonic())]))[0]


def test_engine_applies_the_adapter_and_refreshes_on_schedule_and_cuts(tiny_checkpoint):
    clip = davis_clip("blackswan")
    plain = backend_with(None)
    plain.open_session("s", "oil painting")
    baseline = step(plain, "s", clip[0])

    b = backend_with(tiny_checkpoint, lllite_blocks="all", lllite_refresh=3)
    b.open_session("s", "oil painting")
    out = step(b, "s", clip[0])
    assert not np.array_equal(out, baseline)
    b.set_adapter_strength("s", 0.0)
    assert np.abs(step(b, "s", clip[0]).astype(int) - baseline.astype(int)).max() <= 1
    b.set_adapter_strength("s", 1.0)
    with pytest.raises(ValueError):
        b.set_adapter_strength("s", 2.0)

    session = b.adapter.sessions["s"]
    for i in range(1, 12):
        step(b, "s", clip[i])
        if session.job is not None:
            session.job.result(timeout=30)  # let the worker finish so the next step picks it up
    assert session.refreshes[0] == "start" and session.refreshes.count("periodic") >= 2
    other = davis_clip("dance-twirl")
    step(b, "s", other[0])
    assert session.refreshes[-1] == "cut"
    b.set_prompt("s", "pencil sketch")
    step(b, "s", other[1])
    assert session.refreshes[-1] == "start"
    b.close()


def test_adapter_strength_without_adapter_is_refused():
    from pipeline.core import AdapterUnavailable

    b = backend_with(None)
    b.open_session("s", "x")
    with pytest.raises(AdapterUnavailable, match="--lllite"):
        b.set_adapter_strength("s", 0.5)


def test_lllite_module_embedding_shape():
    m = LLLiteModule(32, conv_strides(16))
    emb = m.embed(torch.zeros(1, 3, 512, 512))
    assert emb.shape == (1, 16 * 32, 32)
    assert torch.all(emb.view(1, 16, 32, 32)[:, :, 16:] == 0)  # reference half gets no signal


@pytest.mark.webrtc
async def test_adapter_strength_over_the_data_channel(tiny_checkpoint):
    """--lllite behind the real server: the page learns there is an adapter and can set its
    strength; out-of-range values are refused."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer
    from media import ClipTrack, LoopbackClient, ping_pong

    from pipeline.config import EngineConfig
    from server.app import create_app
    from server.config import ServerConfig

    engine = EngineConfig(
        kind="diffusion",
        model="tiny",
        device="cpu",
        max_batch=1,
        diffusion=DiffusionConfig(lllite=str(tiny_checkpoint), lllite_blocks="all", text_mode="once"),
    )
    srv = TestServer(create_app(ServerConfig(port=0, engine=engine)))
    await srv.start_server()
    try:
        base = str(srv.make_url("")).rstrip("/")
        async with ClientSession() as http:
            async with http.get(f"{base}/api/config") as resp:
                assert "LLLite" in (await resp.json())["engine"]["adapter"]
            client = LoopbackClient(base, ClipTrack(ping_pong(davis_clip("blackswan")), fps=30))
            await client.connect(http)
            await client.wait_frames(2, timeout=60)
            client.send(type="set_adapter_strength", value=0.4, seq=1)
            client.send(type="set_adapter_strength", value=1.7, seq=2)
            err = await client.wait_message(lambda m: m["type"] == "error", timeout=20)
            assert err["code"] == "bad_value" and err["seq"] == 2  # only the out-of-range one
            count = len(client.received)
            await client.wait_frames(count + 2, timeout=60)  # still streaming
            assert not [m for m in client.messages if m["type"] == "error" and m.get("seq") == 1]
            await client.close()
    finally:
        await srv.close()
