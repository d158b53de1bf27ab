"""fp8='linear' (pipeline/diffusion/fp8.py) on CPU: each converted layer computes its
nn.Linear within E4M3 precision, only the intended layers are converted (never the
adapter's sites), the undo restores the modules, and the tiny engine's outputs stay
within the stated distance of the unconverted engine. torch._scaled_mm runs on the CPU,
so these are the real products; their speed needs a GPU and is not measured here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, DiffusionConfig
from pipeline.diffusion import fp8
from pipeline.diffusion.fp8 import Fp8Linear, install_fp8_linear, quantize_rows
from pipeline.diffusion.lllite import HOST_PATTERN
from pipeline.diffusion.tiny import build_tiny_unet

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(300)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_an_fp8_layer_computes_its_linear_within_e4m3_precision(dtype, bias) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=bias).to(dtype)
    x = torch.randn(3, 10, 64, dtype=dtype) * torch.logspace(-2, 1, 10).to(dtype)[None, :, None]  # rows of any scale
    layer = Fp8Linear(linear)
    got, want = layer(x), linear(x)
    assert got.dtype == dtype and got.shape == want.shape
    error = (got.float() - want.float()).abs() / want.float().abs().amax(dim=-1, keepdim=True)
    assert error.mean() < 0.02 and error.max() < 0.15, (error.mean(), error.max())  # 3 mantissa bits, per row


def test_zero_rows_quantize_to_zeros() -> None:
    values, scale = quantize_rows(torch.zeros(2, 16))
    assert torch.isfinite(scale).all() and (values.float() == 0).all()


def converted(unet: nn.Module) -> list[str]:
    return [name for name, m in unet.named_modules() if isinstance(m, Fp8Linear)]


def test_only_large_linear_layers_inside_the_transformer_blocks_are_converted() -> None:
    unet = build_tiny_unet(0)
    before = {name: m for name, m in unet.named_modules() if isinstance(m, nn.Linear)}
    undo = install_fp8_linear(unet, min_features=16)
    names = converted(unet)
    assert names and all("transformer_blocks." in n for n in names)
    assert not [n for n in names if HOST_PATTERN.search(n)], "the adapter's sites stay nn.Linear"
    assert {n.rsplit(".", 1)[-1] for n in names} >= {"proj", "2"}  # the feed-forwards
    for name in (n for n in before if n not in names and "transformer_blocks." in n):  # each skip has its reason
        layer = before[name]
        small = min(layer.in_features, layer.out_features) < 16 or layer.out_features % 16 or layer.in_features % 16
        assert HOST_PATTERN.search(name) or small, name
    undo()
    assert converted(unet) == []
    assert {name: m for name, m in unet.named_modules() if isinstance(m, nn.Linear)} == before


def test_the_default_size_floor_skips_the_tiny_models_layers() -> None:
    unet = build_tiny_unet(0)
    undo = install_fp8_linear(unet)
    assert converted(unet) == []  # every tiny layer is far below MIN_FEATURES
    undo()


def test_an_unknown_fp8_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="--fp8"):
        DiffusionConfig(fp8="int4")


def test_the_tiny_engine_with_fp8_stays_within_the_stated_distance(monkeypatch) -> None:
    """Measured on this model: mean 0.35 uint8 levels, max 7, over three DAVIS frames (the
    transformers' proj_in/proj_out, left out for it, alone gave mean 1.9, max 30). The
    bounds hold the path to #16's rule for optimised paths: mean <= 1 level, a stated max."""
    from media import davis_clip
    from test_diffusion import backend, frame, run

    monkeypatch.setattr(fp8, "MIN_FEATURES", 16)  # the tiny model's layers are all small
    clip = davis_clip("bmx-trees")[:3]
    outs: dict[str, list[np.ndarray]] = {}
    for mode in ("off", "linear"):
        engine = backend(max_batch=1, fp8=mode)
        try:
            assert bool(converted(engine.denoise.eager.unet)) == (mode == "linear")
            engine.open_session("s", "make it a van Gogh painting")
            outs[mode] = [run(engine, [frame("s", image, pts=i)])[0] for i, image in enumerate(clip)]
        finally:
            engine.close()
        assert converted(engine.denoise.eager.unet) == []  # closing the engine undid it
    for plain, quantized in zip(outs["off"], outs["linear"], strict=True):
        diff = np.abs(plain.astype(np.int16) - quantized.astype(np.int16))
        assert 0 < diff.mean() <= 1.0 and diff.max() <= 12, (diff.mean(), diff.max())
