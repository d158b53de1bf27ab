"""Tiny random DreamLite-mobile stack: runs the real diffusers pipeline end to end on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.unit, pytest.mark.diffusion]

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # allow plain `pytest` without an installed package / conftest
    sys.path.insert(0, str(_REPO))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from pipeline.diffusion.tiny import (  # noqa: E402
    QWEN_SPECIAL_TOKENS,
    TINY_TEXT_HIDDEN,
    TinyComponents,
    build_tiny_components,
    tiny_pipeline,
)

_REFERENCE_UNET_CONFIG = _REPO.parent / "shared" / "reference" / "dreamlite_mobile_unet_config.json"
_PROMPT = "turn it into a van Gogh oil painting"
_EDIT_PREFIX = (
    "[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, the left one has "
)


def _test_image(size: int = 512, seed: int = 0):
    """Smooth gradient + noise RGB frame (PIL), deterministic."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1) * 200.0
    arr = np.clip(base + rs.uniform(0, 55, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


@pytest.fixture(scope="module")
def components() -> TinyComponents:
    return build_tiny_components(seed=0)


@pytest.fixture(scope="module")
def pipe(components):
    return tiny_pipeline(components)


def _run(pipe, image, seed: int, output_type: str = "pt"):
    return pipe(
        prompt=_PROMPT,
        image=image,
        height=512,
        width=512,
        num_inference_steps=1,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    ).images


def test_edit_mode_end_to_end_512_one_step(pipe):
    image = _test_image(512)
    out = _run(pipe, image, seed=0)

    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 3, 512, 512)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.05, "tiny VAE decoder should give a non-degenerate image"

    pil = _run(pipe, image, seed=0, output_type="pil")
    assert len(pil) == 1 and pil[0].size == (512, 512) and pil[0].mode == "RGB"


def test_edit_mode_uses_input_size_when_height_width_omitted(pipe):
    image = _test_image(512).resize((384, 256))
    out = pipe(
        prompt=_PROMPT,
        image=image,
        num_inference_steps=1,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 256, 384, 3)


def test_deterministic_for_same_seed_and_generator(pipe):
    image = _test_image(512)
    a = _run(pipe, image, seed=123)
    b = _run(pipe, image, seed=123)
    assert torch.equal(a, b)
    c = _run(pipe, image, seed=124)
    assert not torch.equal(a, c), "different noise must change the output"


def test_components_deterministic_for_seed_and_rng_untouched():
    torch.manual_seed(777)
    before = torch.get_rng_state()
    c1 = build_tiny_components(seed=5)
    c2 = build_tiny_components(seed=5)
    c3 = build_tiny_components(seed=6)
    assert torch.equal(torch.get_rng_state(), before), "builder must not consume the global RNG"

    for name in ("unet", "vae", "text_encoder"):
        sd1 = getattr(c1, name).state_dict()
        sd2 = getattr(c2, name).state_dict()
        sd3 = getattr(c3, name).state_dict()
        assert sd1.keys() == sd2.keys()
        assert all(torch.equal(sd1[k], sd2[k]) for k in sd1), name
        assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1), name
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in sd1.values())
    assert c1.tokenizer.backend_tokenizer.to_str() == c2.tokenizer.backend_tokenizer.to_str()

    image = _test_image(512)
    out1 = _run(tiny_pipeline(c1), image, seed=0)
    out2 = _run(tiny_pipeline(c2), image, seed=0)
    out3 = _run(tiny_pipeline(c3), image, seed=0)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)


def test_processor_image_tokens_for_256x256(components):
    patch, merge, temporal = 16, 2, 2
    side = 256
    grid = side // patch  # 16 patches per side
    expected_patches = grid * grid  # 256 rows of pixel_values
    expected_tokens = expected_patches // (merge * merge)  # 64 <|image_pad|> tokens

    proc = components.processor
    tok = proc.tokenizer
    text = "<|vision_start|><|image_pad|><|vision_end|>" + _EDIT_PREFIX + _PROMPT
    out = proc(text=[text], images=[_test_image(side)], padding=True, return_tensors="pt")

    assert out["image_grid_thw"].tolist() == [[1, grid, grid]]
    assert tuple(out["pixel_values"].shape) == (expected_patches, 3 * temporal * patch * patch)
    image_pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == image_pad_id).sum()) == expected_tokens == 64
    assert int(out["mm_token_type_ids"].sum()) == expected_tokens  # image tokens are type 1
    assert out["attention_mask"].all()

    # patchify order (Qwen2-VL): (gh/m, gw/m, m, m, C, [T], p, p), mean = std = 0.5
    u8 = torch.from_numpy(np.array(_test_image(side))).permute(2, 0, 1)
    x = ((u8.double() * (1 / 255)).float() - 0.5) / 0.5
    m, p = merge, patch
    ref = (
        x.reshape(3, grid // m, m, p, grid // m, m, p)
        .permute(1, 4, 2, 5, 0, 3, 6)
        .unsqueeze(5)
        .expand(-1, -1, -1, -1, -1, temporal, -1, -1)
        .reshape(expected_patches, 3 * temporal * p * p)
    )
    assert torch.equal(ref, out["pixel_values"])


def test_tokenizer_matches_pipeline_prefix_lengths(components, pipe):
    tok = components.tokenizer
    edit = pipe.prompt_template_encode_edit.format(_EDIT_PREFIX + _PROMPT)
    toks = tok.convert_ids_to_tokens(tok(edit)["input_ids"])
    # the pipeline drops the first 64 hidden states in edit mode: exactly the system prefix
    assert toks.index("<|vision_start|>") == pipe.prompt_template_encode_edit_start_idx == 64
    gen = pipe.prompt_template_encode_generate.format("[Generate]: a cat")
    gtoks = tok.convert_ids_to_tokens(tok(gen)["input_ids"])
    assert gtoks[:34][-2:] == ["user", "Ċ"] and pipe.prompt_template_encode_generate_start_idx == 34

    weird = "Zebra-striped ünïcödé café 😀 at 3:45pm!"
    assert tok.decode(tok(weird)["input_ids"]) == weird
    assert tok.pad_token == "<|endoftext|>" and tok.padding_side == "right"
    for t in QWEN_SPECIAL_TOKENS:
        ids = tok(t)["input_ids"]
        assert len(ids) == 1 and ids[0] == tok.convert_tokens_to_ids(t)

    cfg = components.text_encoder.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size == len(tok)


def test_tiny_configs_keep_real_architecture(components, pipe):
    unet_cfg = components.unet.config
    te_cfg = components.text_encoder.config
    assert unet_cfg.encoder_hid_dim == te_cfg.text_config.hidden_size == TINY_TEXT_HIDDEN
    assert te_cfg.vision_config.out_hidden_size == TINY_TEXT_HIDDEN
    vc = te_cfg.vision_config
    assert (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size) == (16, 2, 2)
    assert max(vc.deepstack_visual_indexes) < vc.depth
    assert components.vae.config.latent_channels == 4 and pipe.vae_scale_factor == 8

    sched = components.scheduler.config
    assert sched.use_dynamic_shifting and sched.time_shift_type == "exponential"
    assert (sched.base_shift, sched.max_shift) == (0.5, 1.16)
    assert (sched.base_image_seq_len, sched.max_image_seq_len) == (256, 4096)

    if _REFERENCE_UNET_CONFIG.exists():
        real = json.loads(_REFERENCE_UNET_CONFIG.read_text())
        for key in (
            "down_block_types",
            "up_block_types",
            "mid_block_type",
            "encoder_hid_dim_type",
            "addition_embed_type",
            "use_sep_conv",
            "qk_norm",
            "num_kv_heads",
            "ff_mult",
            "use_linear_projection",
            "layers_per_block",
            "num_mid_layers",
            "flip_sin_to_cos",
            "freq_shift",
            "in_channels",
            "out_channels",
        ):
            assert list_or_value(unet_cfg[key]) == list_or_value(real[key]), key
        assert unet_cfg.projection_class_embeddings_input_dim == 2 * unet_cfg.addition_time_embed_dim


def list_or_value(v):
    return list(v) if isinstance(v, (list, tuple)) else v
