"""The graph profiler's CPU-checkable parts: kernel grouping, FLOP attribution and the
--set parser (the profile itself needs a GPU: python -m bench.profile_graph)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.profile_graph import flops_by_group, kernel_group, settings_of


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("triton_per_fused_native_group_norm_silu_3", "triton"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("void at::native::conv_depthwise2d_forward_kernel<c10::BFloat16>", "convolution"),
        ("nvjet_tst_128x64_64x8_1x1_v_bz_TNT", "gemm"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add>", "other"),
    ],
)
def test_kernel_names_fall_in_their_group(name, group):
    assert kernel_group(name) == group


@pytest.mark.unit
def test_flops_are_attributed_to_convolutions_and_gemms():
    conv, linear = nn.Conv2d(64, 32, 3, padding=1, bias=False), nn.Linear(256, 128, bias=False)
    x, y = torch.randn(2, 64, 32, 32), torch.randn(1024, 256)
    got = flops_by_group(lambda: (conv(x), linear(y)))
    assert got["convolution"] == round(2 * 2 * 32 * 32 * 32 * 64 * 9 / 1e9, 1)
    assert got["gemm"] == round(2 * 1024 * 256 * 128 / 1e9, 1)


@pytest.mark.unit
def test_set_parses_by_field_type_and_names_unknown_fields():
    got = settings_of(["fuse_qkv=1", "channels_last=all", "inductor=conv1x1_mm,coordinate_descent", "text_tokens=128"])
    assert got == {
        "fuse_qkv": True,
        "channels_last": "all",
        "inductor": ("conv1x1_mm", "coordinate_descent"),
        "text_tokens": 128,
    }
    with pytest.raises(SystemExit, match="fuse_qvk"):
        settings_of(["fuse_qvk=1"])


@pytest.mark.diffusion
def test_smoke_run_writes_every_section(tmp_path):
    """The whole tool on the CPU with the tiny components: every section lands in the file."""
    import json

    from bench.profile_graph import main

    argv = ["--smoke", "--reference", "unused", "--batch", "1", "--compile", "none", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    (out,) = tmp_path.glob("*-graph-profile-b1.json")
    report = json.loads(out.read_text())
    assert report["settings"]["compile"] == "none" and report["served_ms"] > 0
    assert report["gflop_per_step"]["convolution"] > 0
    assert {"depthwise", "1x1", "3x3"} <= set(report["conv_layouts"]), report["conv_layouts"]
    assert all(row["n"] > 0 and row["best_ms"] <= row["nchw_ms"] for row in report["conv_layouts"].values())
    assert report["attention_backends"] and all(row["calls"] > 0 for row in report["attention_backends"])
