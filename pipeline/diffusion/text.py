"""Vision-aware text conditioning: Qwen3-VL as DreamLite's text encoder.

Same maths as DreamLiteMobilePipeline.encode_prompt in edit mode (template, frame,
last hidden state minus the 64-token system prefix) but shaped for streaming:

* prompts are tokenized once (cached) and padded on the right to a FIXED length, so
  every batch has static shapes; with causal attention the valid positions never see
  the padding, so no attention mask is needed inside the text encoder;
* the frame is resized and patchified on the GPU (the processor does it in numpy/PIL);
* image tokens sit at fixed positions (the prompt comes after the image), so M-RoPE
  position ids, the vision tower's index tensors and the DeepStack positions are
  computed once instead of per call, and the stock host syncs (.tolist() per vision
  layer, boolean-mask indexing) are replaced by static slices and one batched SDPA.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLTextModel,
    Qwen3VLVisionAttention,
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

from pipeline.core import PromptRejected
from pipeline.diffusion.streams import to_device
from pipeline.diffusion.text_lm import PrefixLanguageModel

log = logging.getLogger(__name__)

# diffusers DreamLiteMobilePipeline: prompt_template_encode_edit / _start_idx and the edit
# instruction wrapper (tests check these equal the pipeline's own strings).
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter "
    "or modify the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
SYSTEM_PREFIX_TOKENS = 64
EDIT_INSTRUCTION = (
    "[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, the left one has {}"
)
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"


class _EqualImagesVisionAttention(Qwen3VLVisionAttention):
    """The stock vision attention, for a batch of equally sized images, as one batched
    SDPA call. The stock non-flash path splits the packed sequence with
    cu_seqlens.tolist() in every layer, a host sync; here the split is a reshape."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_seqlen: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        seq = hidden_states.shape[0]
        images = cu_seqlens.shape[0] - 1
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        assert position_embeddings is not None
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        q, k, v = (t.reshape(images, seq // images, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(seq, -1))


class _StaticDeepstackTextModel(Qwen3VLTextModel):
    """Adds DeepStack features at a static slice of positions (the stock code indexes with
    a boolean mask, which syncs). Falls back to the stock path for a mask."""

    def _deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds):  # type: ignore[no-untyped-def]
        if not isinstance(visual_pos_masks, slice):
            return super()._deepstack_process(hidden_states, visual_pos_masks, visual_embeds)
        hidden_states = hidden_states.clone()
        b = hidden_states.shape[0]
        hidden_states[:, visual_pos_masks] += visual_embeds.view(b, -1, visual_embeds.shape[-1]).to(hidden_states.dtype)
        return hidden_states


def install_static_paths(text_encoder: Any) -> None:
    """Swap in the sync-free equivalents above (same parameters, same maths)."""
    model = text_encoder.model
    for block in model.visual.blocks:
        block.attn.__class__ = _EqualImagesVisionAttention
    model.language_model.__class__ = _StaticDeepstackTextModel


@dataclass(frozen=True)
class PromptTokens:
    prompt: str
    ids: torch.Tensor
    """(text_tokens,) int64, right-padded."""
    length: int
    """Valid tokens (the rest is padding)."""


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/patch * W/patch, C * temporal * patch * patch) in the Qwen2-VL
    processor's row order (2x2 merge blocks) with each still frame repeated `temporal` times."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    p = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    p = p.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (b, bh, bw, mh, mw, c, ph, pw)
    p = p.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    return p.reshape(b * gh * gw, c * temporal * patch * patch)


class TextConditioner:
    """Prompt + frame -> (B, text_tokens - 64, hidden) conditioning and its mask."""

    def __init__(
        self,
        text_encoder: Any,
        tokenizer: Any,
        *,
        image_size: int,
        text_tokens: int,
        device: torch.device,
        length_step: int = 0,
        prefix_cache: bool = False,
        compile_lm: bool = False,
    ) -> None:
        self.model = text_encoder.model
        install_static_paths(text_encoder)
        vc = text_encoder.config.vision_config
        self.patch, self.merge, self.temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        if image_size % (self.patch * self.merge):
            raise ValueError(f"text image size {image_size} must be a multiple of {self.patch * self.merge}")
        self.image_size = image_size
        self.text_tokens = text_tokens
        self.device = device
        self.dtype = self.model.visual.patch_embed.proj.weight.dtype
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.image_token_id = text_encoder.config.image_token_id
        grid = image_size // self.patch
        self.grid_thw = torch.tensor([[1, grid, grid]])
        self.image_tokens = (grid // self.merge) ** 2
        self._vision_kwargs: dict[int, dict[str, torch.Tensor]] = {}
        self._token_cache: OrderedDict[tuple[str, bool], PromptTokens] = OrderedDict()

        # The fixed layout: [system 64][vision_start][image pads][vision_end][prompt...][suffix][pad].
        probe = self.tokens("", with_image=True)
        ids = probe.ids
        pads = (ids == self.image_token_id).nonzero().flatten()
        self.image_slice = slice(int(pads[0]), int(pads[-1]) + 1)
        assert self.image_slice.stop - self.image_slice.start == self.image_tokens
        mm = (ids == self.image_token_id).long()[None]
        pos, _ = self.model.get_rope_index(ids[None], mm, self.grid_thw, None, None)
        self.rope_positions = pos.to(device)  # (3, 1, L): the same for every row
        self.length_buckets = length_buckets(probe.length, text_tokens, length_step)
        self.prefix: PrefixLanguageModel | None = None
        if prefix_cache:
            try:
                self._install_prefix(probe, compile_lm)
            except Exception as exc:  # noqa: BLE001 - an optimisation: the stock path computes the same
                log.warning("text prefix cache unavailable (%s); running the full template", exc)
                self.prefix = None

    # ---- host side: tokens ----------------------------------------------------------------

    def tokens(self, prompt: str, *, with_image: bool = True) -> PromptTokens:
        """Tokenized, padded template for a prompt (cached). Raises PromptRejected when the
        prompt does not fit the fixed length."""
        key = (prompt, with_image)
        cached = self._token_cache.get(key)
        if cached is not None:
            self._token_cache.move_to_end(key)
            return cached
        text = EDIT_TEMPLATE.format(EDIT_INSTRUCTION.format(prompt))
        if with_image:
            text = text.replace("<|image_pad|>", "<|image_pad|>" * self.image_tokens)
        else:
            text = text.replace(IMAGE_PART, "")
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) > self.text_tokens:
            over = len(ids) - self.text_tokens
            raise PromptRejected(
                "prompt_too_long",
                f"prompt is {over} tokens over the text encoder's budget of {self.text_tokens} tokens; shorten it",
            )
        padded = torch.full((self.text_tokens,), self.pad_id, dtype=torch.long)
        padded[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        tokens = PromptTokens(prompt, padded, len(ids))
        prefix = getattr(self, "_prefix_ids", None)
        if prefix is not None and not torch.equal(padded[:SYSTEM_PREFIX_TOKENS], prefix):
            raise PromptRejected("prompt_invalid", "prompt changes the template's system prefix; rephrase it")
        self._token_cache[key] = tokens
        if len(self._token_cache) > 256:
            self._token_cache.popitem(last=False)
        return tokens

    # ---- device side ------------------------------------------------------------------------

    def _vision_precomputed(self, images: int) -> dict[str, torch.Tensor]:
        kw = self._vision_kwargs.get(images)
        if kw is None:
            thw = self.grid_thw.repeat(images, 1)
            vis = self.model.visual
            indices, weights = get_vision_interpolation_indices_and_weights(
                thw,
                num_grid_per_side=vis.num_grid_per_side,
                mode=vis.interpolation_mode,
                align_corners=vis.interpolation_align_corners,
                spatial_merge_size=vis.config.spatial_merge_size,
            )
            kw = {
                "grid_thw": thw.to(self.device),
                "cu_seqlens": get_vision_cu_seqlens(thw).to(self.device),
                "position_ids": get_vision_position_ids(thw, vis.spatial_merge_size).to(self.device),
                "interp_indices": indices.to(self.device),
                "interp_weights": weights.to(self.device),
            }
            self._vision_kwargs[images] = kw
        return dict(kw)  # the vision helpers pop from it

    def prepare_images(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 255] -> the text encoder's normalised view, resized to
        image_size (Qwen3-VL: mean = std = 0.5)."""
        if frames.shape[-1] != self.image_size:
            frames = F.interpolate(frames, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return (frames * (1 / 255) - 0.5) / 0.5

    def _install_prefix(self, probe: PromptTokens, compile_lm: bool) -> None:
        """Compute the system prefix's K/V once (see text_lm.py). Prompts never change the
        first 64 tokens (the image or the instruction follows a special token or a
        newline); tokens() still checks every prompt against them."""
        text_only = self.tokens("", with_image=False)
        prefix = probe.ids[:SYSTEM_PREFIX_TOKENS]
        if not torch.equal(text_only.ids[:SYSTEM_PREFIX_TOKENS], prefix):
            raise ValueError("the tokenizer splits the system prefix differently with and without an image")
        self.prefix = PrefixLanguageModel(self.model.language_model, compile_lm)
        self.prefix.set_prefix(prefix.to(self.device), self.rope_positions[:, :, :SYSTEM_PREFIX_TOKENS])
        self._prefix_ids = prefix
        self._token_cache.clear()

    def length_for(self, tokens: list[PromptTokens]) -> int:
        """The sequence length a batch of prompts runs at: the smallest length bucket that
        holds the longest of them."""
        longest = max(t.length for t in tokens)
        return next(b for b in self.length_buckets if b >= longest)

    def host_inputs(self, tokens: list[PromptTokens], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, length), mask (B, text_tokens - 64)) on the device (current stream,
        through pinned memory). The mask marks valid positions after the system prefix;
        the text encoder itself needs none (causal attention, right padding)."""
        length = self.length_for(tokens) if length is None else length
        ids = torch.stack([t.ids[:length] for t in tokens])
        lengths = torch.tensor([t.length for t in tokens])
        mask = (torch.arange(SYSTEM_PREFIX_TOKENS, self.text_tokens)[None] < lengths[:, None]).long()
        return to_device(ids, self.device), to_device(mask, self.device)

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor | None, tokens: list[PromptTokens]) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (B, 3, S, S) float in [0, 255] on the device, or None for text-only
        tokens. Returns (B, text_tokens - 64, hidden) in the encoder's dtype and the
        (B, text_tokens - 64) int64 mask of valid positions."""
        ids, mask = self.host_inputs(tokens)
        return self.forward(frames, ids), mask

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """Device-only part of encode() (no host syncs or copies: CUDA-graph capturable).
        ids (B, L) for a length bucket L; the result is zero-padded to text_tokens - 64
        rows (the UNet's static shape; its mask hides them)."""
        b, length = ids.shape
        p = SYSTEM_PREFIX_TOKENS
        start = p if self.prefix is not None else 0
        embeds = self.model.get_input_embeddings()(ids[:, start:])
        image, deepstack = None, None
        if frames is not None:
            pixels = patchify(self.prepare_images(frames), self.patch, self.merge, self.temporal)
            vision = self.model.visual(pixels.to(self.dtype), **self._vision_precomputed(b))
            image_embeds = vision.pooler_output.view(b, self.image_tokens, -1).to(embeds.dtype)
            image = slice(self.image_slice.start - start, self.image_slice.stop - start)
            embeds = torch.cat([embeds[:, : image.start], image_embeds, embeds[:, image.stop :]], dim=1)
            deepstack = vision.deepstack_features
            positions = self.rope_positions[:, :, start:length].expand(-1, b, -1)
        else:
            positions = torch.arange(start, length, device=ids.device).view(1, 1, -1).expand(3, b, -1)
        if self.prefix is not None:
            hidden = self.prefix.forward(embeds, positions, image, deepstack)
        else:
            lm = self.model.language_model
            hidden = lm(
                inputs_embeds=embeds,
                position_ids=positions,
                visual_pos_masks=image,
                deepstack_visual_embeds=deepstack,
                use_cache=False,
            ).last_hidden_state[:, p:]
        return F.pad(hidden, (0, 0, 0, self.text_tokens - length))


def length_buckets(shortest: int, text_tokens: int, step: int) -> tuple[int, ...]:
    """Sequence lengths compiled for the text encoder: multiples of `step` after the
    64-token prefix from the shortest possible prompt up, plus text_tokens itself
    (step 0: text_tokens alone, the fixed layout)."""
    if step <= 0:
        return (text_tokens,)
    first = SYSTEM_PREFIX_TOKENS + -(-(shortest - SYSTEM_PREFIX_TOKENS) // step) * step
    return (*range(min(first, text_tokens), text_tokens, step), text_tokens)
