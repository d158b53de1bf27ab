"""Optional UNet/VAE rewrites applied before compiling (each behind a DiffusionConfig
switch; every one is checked against the stock modules by the CPU anchors and by
`python -m bench.gpu_check` on the GPU):

* channels-last weights (`channels_last`: 'vae' or 'all'): same maths, another memory
  layout for the convolutions (measured eager on an H100: the TAESD encoder/decoder
  gained 30-35 %, the UNet lost 17 %, hence 'vae' alone by default);
* fused projections (`fuse_qkv`): each self-attention's to_q/to_k/to_v as one GEMM and
  each cross-attention's to_k/to_v as one. diffusers' own fuse_qkv_projections() does
  not cover DreamLite's GQA processor, so this is a processor of our own. Attentions
  whose projections carry the LLLite adapter keep theirs.

Every change is undone by the callable the installers return (the modules are shared
with whoever built them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0
from torch import nn

from pipeline.config import CHANNELS_LAST_CHOICES

log = logging.getLogger(__name__)


class FusedProjectionsProcessor(DreamLiteAttnProcessor2_0):
    """DreamLiteAttnProcessor2_0 (diffusers 0.42) with fused projections, for the plain
    case the DreamLite transformer blocks use: 3-D input, no spatial/group norm, no
    residual connection or output rescale (checked by fusable())."""

    def __init__(self, split: tuple[int, ...]) -> None:
        self.split = split
        """Output widths of to_q, to_k, to_v. The fused layers are submodules of the
        attention (fused_qkv, fused_kv), so they move and compile as its parameters."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):  # type: ignore[override]
        batch = hidden_states.shape[0]
        if encoder_hidden_states is None and hasattr(attn, "fused_qkv"):
            query, key, value = attn.fused_qkv(hidden_states).split(self.split, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if encoder_hidden_states is not None and attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            key, value = attn.fused_kv(context).split(self.split[1:], dim=-1)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        query = query.view(batch, -1, attn.heads, head_dim)
        key = key.view(batch, -1, kv_heads, head_dim)
        value = value.view(batch, -1, kv_heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if kv_heads != attn.heads:
            repeat = attn.heads // kv_heads
            key = torch.repeat_interleave(key, repeat, dim=2, output_size=key.shape[2] * repeat)
            value = torch.repeat_interleave(value, repeat, dim=2, output_size=value.shape[2] * repeat)
        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend, parallel_config=None
        )
        out = out.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _concat(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    bias = first.bias is not None
    fused = nn.Linear(
        first.in_features,
        sum(x.out_features for x in linears),
        bias=bias,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([x.weight for x in linears]))
        if bias:
            fused.bias.copy_(torch.cat([x.bias for x in linears]))
    return fused.eval().requires_grad_(False)


def fusable(attn: nn.Module) -> bool:
    return (
        isinstance(attn.processor, DreamLiteAttnProcessor2_0)
        and attn.spatial_norm is None
        and attn.group_norm is None
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
        and all(isinstance(getattr(attn, n), nn.Linear) for n in ("to_k", "to_v"))
        and (attn.to_v.bias is None) == (attn.to_k.bias is None)
    )


def install_fused_projections(unet: nn.Module) -> Callable[[], None]:
    """Fuse every eligible attention of the UNet; returns the undo."""
    from diffusers.models.attention_processor import Attention

    saved: list[tuple[nn.Module, object]] = []
    for module in unet.modules():
        if not isinstance(module, Attention) or not fusable(module):
            continue
        k, v = module.to_k, module.to_v
        q = module.to_q  # an AdaptedLinear (LLLite site) keeps its own projection
        plain_q = type(q) is nn.Linear and q.in_features == k.in_features and (q.bias is None) == (k.bias is None)
        self_attn = not module.is_cross_attention
        qkv = _concat([q, k, v]) if self_attn and plain_q else None
        split = (q.out_features if plain_q else 0, k.out_features, v.out_features)
        saved.append((module, module.processor))
        if qkv is not None:
            module.add_module("fused_qkv", qkv)
        module.add_module("fused_kv", _concat([k, v]))
        module.processor = FusedProjectionsProcessor(split)
    log.info("fused attention projections in %d attention modules", len(saved))

    def undo() -> None:
        for module, processor in saved:
            module.processor = processor
            for name in ("fused_qkv", "fused_kv"):
                if hasattr(module, name):
                    delattr(module, name)

    return undo


def install_channels_last(which: str, unet: nn.Module, vae: nn.Module) -> Callable[[], None]:
    if which not in CHANNELS_LAST_CHOICES:
        raise ValueError(f"channels_last {which!r} is not known; use one of {', '.join(CHANNELS_LAST_CHOICES)}")
    modules = {"off": [], "vae": [vae], "all": [vae, unet]}[which]
    for m in modules:
        m.to(memory_format=torch.channels_last)

    def undo() -> None:
        for m in modules:
            m.to(memory_format=torch.contiguous_format)

    return undo
