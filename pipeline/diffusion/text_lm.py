"""Qwen3-VL's language model for our fixed template, without recomputing constants.

Every row starts with the same 64-token system prefix, and attention is causal, so the
prefix's keys and values in every layer are constants: nothing after it can change
them. Two facts make that exact for Qwen3-VL: the prefix tokens precede the image, so
their M-RoPE position ids are plain 0..63 on all three axes (get_rope_index gives
text tokens before the first image t = h = w = index); and DeepStack adds vision
features at the image positions only. So the prefix runs once (batch 1) at start, and
each launch runs the decoder layers on the suffix alone, its queries attending to the
cached prefix K/V plus the causal suffix. Its hidden states are never used (the
pipeline drops them), so nothing is lost.

The layer loop is written out here (the same submodules and maths as
Qwen3VLTextDecoderLayer / Qwen3VLTextAttention with SDPA) because the stock forward
has no way to take a cache that is shared by every row and reused by every call; it
is plain tensor code, so one decoder layer compiles (torch.compile) once and serves all
28 layers (regional compilation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb, repeat_kv

log = logging.getLogger(__name__)

KV = tuple[torch.Tensor, torch.Tensor]


def decoder_layer(
    layer: Any,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prefix_k: torch.Tensor | None,
    prefix_v: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Qwen3VLTextDecoderLayer on `hidden` (B, L, D) whose positions follow the
    prefix (when given, (1, kv_heads, P, head_dim) after RoPE). Returns the new hidden
    states and this call's own K/V (after RoPE, before the GQA repeat)."""
    attn = layer.self_attn
    b, length, _ = hidden.shape
    x = layer.input_layernorm(hidden)
    shape = (b, length, -1, attn.head_dim)
    q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys, values = k, v
    mask = None
    if prefix_k is not None and prefix_v is not None:
        p = prefix_k.shape[2]
        keys = torch.cat([prefix_k.expand(b, -1, -1, -1), k], dim=2)
        values = torch.cat([prefix_v.expand(b, -1, -1, -1), v], dim=2)
        # query i (absolute position p + i) sees every prefix key and suffix keys <= i
        mask = torch.ones(length, p + length, dtype=torch.bool, device=hidden.device).tril(diagonal=p)
    groups = attn.num_key_value_groups
    out = F.scaled_dot_product_attention(
        q,
        repeat_kv(keys, groups),
        repeat_kv(values, groups),
        attn_mask=mask,
        is_causal=mask is None,
        scale=attn.scaling,
    )
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(b, length, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, k, v


class PrefixLanguageModel:
    """Qwen3VLTextModel's forward for rows that share their first `prefix` tokens."""

    def __init__(self, lm: Any, compile_layers: bool = False) -> None:
        self.lm = lm
        self._compiled: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        if compile_layers:
            # One graph for all layers (parameters are inputs) and, with dynamic batch and
            # length, for every (batch, length) bucket: seconds of compile, not minutes.
            self._compiled = torch.compile(decoder_layer, dynamic=True, fullgraph=True)
        self.prefix_kv: list[KV] | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _layer(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:  # noqa: BLE001 - compiling is an optimisation; eager is exact
                log.warning("text-encoder compile failed (%s: %s); running it eagerly", type(exc).__name__, exc)
                self._compiled = None
        return decoder_layer(*args)

    @torch.inference_mode()
    def set_prefix(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Compute the prefix's per-layer K/V once: ids (P,), positions (3, 1, P)."""
        hidden = self.lm.embed_tokens(ids[None])
        cos, sin = self.lm.rotary_emb(hidden, positions)
        kv: list[KV] = []
        for layer in self.lm.layers:
            hidden, k, v = decoder_layer(layer, hidden, cos, sin, None, None)
            kv.append((k, v))
        self.prefix_kv = kv

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        image: slice | None,
        deepstack: Sequence[torch.Tensor] | None,
    ) -> torch.Tensor:
        """embeds (B, L, D) of the tokens after the prefix, positions (3, B, L) their
        M-RoPE ids, `image` the image tokens' slice in these L positions (DeepStack adds
        deepstack[i] there after layer i). Returns the final-norm hidden states (B, L, D)."""
        assert self.prefix_kv is not None, "set_prefix() first"
        cos, sin = self.lm.rotary_emb(embeds, positions)
        hidden = embeds
        b = embeds.shape[0]
        for i, (layer, (pk, pv)) in enumerate(zip(self.lm.layers, self.prefix_kv, strict=True)):
            hidden, _, _ = self._layer(layer, hidden, cos, sin, pk, pv)
            if deepstack is not None and image is not None and i < len(deepstack):
                extra = deepstack[i].view(b, -1, hidden.shape[-1]).to(hidden.dtype)
                hidden = torch.cat([hidden[:, : image.start], hidden[:, image] + extra, hidden[:, image.stop :]], 1)
        return self.lm.norm(hidden)
