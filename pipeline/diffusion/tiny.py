"""Tiny, randomly initialised stand-ins for the DreamLite-mobile model stack.

Everything here is built offline, in code, from the *exact* classes that
``diffusers.DreamLiteMobilePipeline`` uses, so tests can run the real pipeline
(and any custom engine that must reproduce it) on CPU in well under a second:

* ``DreamLiteUNetModel``       same block types / features as the 0.39 B config
                               (``../shared/reference/dreamlite_mobile_unet_config.json``),
                               just narrow and shallow.
* ``AutoencoderTiny``          4 latent channels, spatial scale factor 8.
* ``Qwen3VLForConditionalGeneration``  tiny text + vision towers (patch 16,
                               spatial merge 2, temporal patch 2, DeepStack).
* ``Qwen3VLProcessor``         = byte-level BPE ``PreTrainedTokenizerFast`` built with
                               ``tokenizers`` + ``Qwen2VLImageProcessorPil`` +
                               ``Qwen3VLVideoProcessor``.
* ``FlowMatchEulerDiscreteScheduler``  dynamic (exponential) shift, 0.5/1.16, 256/4096.

The tokenizer reproduces Qwen's pre-tokenisation (same split regex + byte-level
alphabet) and is trained on the DreamLite prompt templates, so the edit-mode
system prefix is exactly 64 tokens and the generate-mode prefix exactly 34 --
the hard-coded ``*_start_idx`` values of the pipeline -- just like the real Qwen
tokenizer. Arbitrary text still tokenizes (falls back to byte tokens).

Weights are random: outputs are meaningless pictures, but shapes, dtypes, the
data flow and determinism are those of the real pipeline.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "TINY_TEXT_HIDDEN",
    "TinyComponents",
    "build_tiny_components",
    "build_tiny_processor",
    "build_tiny_scheduler",
    "build_tiny_text_encoder",
    "build_tiny_tokenizer",
    "build_tiny_unet",
    "build_tiny_vae",
    "tiny_pipeline",
    "tiny_unet_config",
]

# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------
TINY_TEXT_HIDDEN = 32  # text-encoder hidden size == UNet encoder_hid_dim (real: 2048)
TINY_CROSS_ATTN_DIM = 48  # UNet cross_attention_dim (real: 2304); != text hidden so the proj is real
PATCH_SIZE = 16
SPATIAL_MERGE = 2
TEMPORAL_PATCH = 2

# Qwen2/Qwen3 special tokens, in Qwen's id order (real ids 151643..151656). In the tiny tokenizer
# they are appended after the byte-level BPE vocabulary, keeping the same relative order.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2 / Qwen3 pre-tokenizer split regex (tokenizer.json of Qwen2.5 / Qwen3(-VL)).
_QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Text the tiny BPE is trained on: the pipeline's templates (so their words are single tokens, as
# with the real Qwen vocabulary) plus a small English / stylisation vocabulary.
_TEMPLATE_TEXTS: tuple[str, ...] = (
    "system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. "
    "Generate a new image that meets the user's requirements while maintaining consistency with "
    "the original input where appropriate.",
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:",
    "\nuser\n",
    "\nassistant\n",
    "[Edit]: A diptych with two side-by-side images of the same scene. Compared to the right side, the left one has ",
    "[Generate]: ",
)
_EXTRA_WORDS = (
    "a an the and or of in on at to with without from into over under by for as is are was were be "
    "it its this that these those has have had make made turn change style styled look looks like "
    "painting painted drawing drawn sketch sketched oil watercolor pencil ink charcoal pastel "
    "acrylic anime cartoon comic manga pixel art digital 3d render rendered photo photograph "
    "photorealistic realistic cinematic film noir vintage retro modern futuristic cyberpunk "
    "steampunk fantasy surreal abstract impressionist expressionist cubist pop minimalist gothic "
    "baroque renaissance ukiyo-e van gogh monet picasso studio ghibli pixar disney lego clay "
    "claymation origami mosaic stained glass neon glowing lights light dark night day sunset "
    "sunrise morning evening winter summer autumn fall spring snow snowy rain rainy fog foggy "
    "storm sunny cloudy sky sea ocean beach forest mountain city street river lake desert space "
    "stars moon sun fire water ice gold golden silver red orange yellow green blue purple pink "
    "brown black white gray grey colorful vivid bright pastel soft warm cold hard sharp blurry "
    "person people man woman boy girl child face hair eyes smile dog cat bird horse car bike tree "
    "trees flower flowers grass house building room background foreground scene image picture "
    "frame video camera old young big small large tiny tall short happy sad angry zombie robot "
    "alien statue marble bronze wood wooden metal glass paper fabric knitted wool plastic toy "
    "miniature tilt-shift high quality detailed intricate beautiful masterpiece hd 4k 8k "
    "please add remove replace keep same everything into version one two three 0 1 2 3 4 5 6 7 8 9 "
    ". , ! ? ' \" - : ; ( ) [ ] / & + * %"
)
_BPE_VOCAB_SIZE = 3000  # upper bound; training stops earlier once every training word is one token


# ---------------------------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinyComponents:
    """The five objects ``DreamLiteMobilePipeline`` is built from (tokenizer = processor.tokenizer)."""

    unet: Any  # diffusers.DreamLiteUNetModel
    vae: Any  # diffusers.AutoencoderTiny
    text_encoder: Any  # transformers.Qwen3VLForConditionalGeneration
    processor: Any  # transformers.Qwen3VLProcessor
    scheduler: Any  # diffusers.FlowMatchEulerDiscreteScheduler

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


# ---------------------------------------------------------------------------------------------
# Tokenizer / processor
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train (once per process) the tiny byte-level BPE; returned as JSON so each call gets a copy."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()

    words = _EXTRA_WORDS.split()
    corpus = list(_TEMPLATE_TEXTS) + [" ".join(words)] + [" " + w for w in words] + words
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return tok.to_str()


def build_tiny_tokenizer():
    """Qwen-style byte-level BPE tokenizer wrapped in ``PreTrainedTokenizerFast`` (right padding)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="right",
        truncation_side="right",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    return tok


def build_tiny_processor():
    """``Qwen3VLProcessor`` = tiny tokenizer + ``Qwen2VLImageProcessorPil`` + ``Qwen3VLVideoProcessor``.

    Image settings follow the published Qwen3-VL image processor (not verifiable offline against the
    DreamLite checkpoint): patch 16, merge 2, temporal patch 2, mean = std = 0.5, min_pixels 65536
    (256*256), max_pixels 16777216, bicubic. The video processor only has to exist (DreamLite feeds
    no video); its patch geometry matches the image processor.
    """
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH,
        merge_size=SPATIAL_MERGE,
        size={"shortest_edge": 256 * 256, "longest_edge": 16777216},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH,
        merge_size=SPATIAL_MERGE,
        size={"shortest_edge": 4096, "longest_edge": 25165824},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        video_processor=video_processor,
    )


def _frozen_fp32(model):
    """eval(), no grads, fp32 (only cast when needed: diffusers warns on ``.to(dtype)``)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def build_tiny_text_encoder(tokenizer, seed: int = 0):
    """Tiny ``Qwen3VLForConditionalGeneration`` whose token ids match ``tokenizer``."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    text_config = {
        "model_type": "qwen3_vl_text",
        "vocab_size": vocab_size,
        "hidden_size": TINY_TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        # head_dim 16 -> 8 rotary frequencies split (t, h, w) = (4, 2, 2), interleaved like the real
        # model's (24, 20, 20) for head_dim 128.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
    }
    vision_config = {
        "model_type": "qwen3_vl_vision",
        "depth": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": SPATIAL_MERGE,
        "temporal_patch_size": TEMPORAL_PATCH,
        "out_hidden_size": TINY_TEXT_HIDDEN,
        "num_position_embeddings": 64,  # 8x8 learned grid, bilinearly resampled per image
        "deepstack_visual_indexes": [0, 1, 2],  # 3 DeepStack taps like the real [5, 11, 17]
        "hidden_act": "gelu_pytorch_tanh",
    }
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    return _frozen_fp32(model)


def tiny_unet_config() -> dict[str, Any]:
    """The reference DreamLite-mobile UNet config, shrunk. Same block types and features."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": [
            "CrossAttnDownRemoveSelfAttnBlock2D",
            "CrossAttnDownRemoveSelfAttnBlock2D",
            "CrossAttnDownBlock2D",
        ],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": [
            "CrossAttnUpBlock2D",
            "CrossAttnUpRemoveSelfAttnBlock2DV1",
            "UpBlock2D",
        ],
        "only_cross_attention": False,
        "block_out_channels": [16, 32, 32],  # real [256, 512, 896]
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": 0.0,
        "act_fn": "silu",
        "norm_num_groups": 8,  # real 32
        "norm_eps": 1e-5,
        "cross_attention_dim": TINY_CROSS_ATTN_DIM,  # real 2304
        "transformer_layers_per_block": [1, 1, 2],  # real [1, 2, 4]
        "reverse_transformer_layers_per_block": None,
        "encoder_hid_dim": TINY_TEXT_HIDDEN,  # real 2048 (= Qwen3-VL-2B hidden size)
        "encoder_hid_dim_type": "text_proj_rms",
        "attention_head_dim": [2, 4, 4],  # diffusers quirk: these are HEAD COUNTS (real [4, 8, 14])
        "num_attention_heads": None,
        "dual_cross_attention": False,
        "use_linear_projection": True,
        "class_embed_type": None,
        "addition_embed_type": "time",
        "addition_time_embed_dim": 8,  # real 256
        "projection_class_embeddings_input_dim": 16,  # = 2 time_ids (W, H) * addition_time_embed_dim
        "addition_embed_type_num_heads": 64,
        "num_class_embeds": None,
        "upcast_attention": None,
        "resnet_time_scale_shift": "default",
        "resnet_skip_time_act": False,
        "resnet_out_scale_factor": 1.0,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "time_embedding_act_fn": None,
        "timestep_post_act": None,
        "time_cond_proj_dim": None,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "attention_type": "default",
        "class_embeddings_concat": False,
        "mid_block_only_cross_attention": None,
        "cross_attention_norm": None,
        "qk_norm": "rms_norm",
        "use_sep_conv": True,
        "ff_mult": 3,
        "num_kv_heads": 1,
        "num_mid_layers": 1,
    }


def build_tiny_unet(seed: int = 0):
    from diffusers import DreamLiteUNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = DreamLiteUNetModel(**tiny_unet_config())
    return _frozen_fp32(unet)


def build_tiny_vae(seed: int = 0):
    """``AutoencoderTiny`` with 4 latent channels and 3 stride-2 stages (scale factor 8)."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderTiny(
            in_channels=3,
            out_channels=3,
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            act_fn="relu",
            upsample_fn="nearest",
            latent_channels=4,
            upsampling_scaling_factor=2,
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_magnitude=3,
            latent_shift=0.5,
            force_upcast=False,
            scaling_factor=1.0,
            shift_factor=0.0,
        )
        _calibrate_vae(vae)
    return _frozen_fp32(vae)


@torch.no_grad()
def _calibrate_vae(vae) -> None:
    """Give the random VAE a well-conditioned signal path (must run under a seeded RNG).

    PyTorch's default conv init shrinks activations through TAESD's deep ReLU stacks, so a default
    random decoder returns an almost constant, half-clamped image -- useless as a reference for an
    engine that must match the pipeline. Instead: He-normal convs with zero bias, then a
    deterministic data-dependent rescale of the two output convs so that on random input the
    latents are ~N(0, 1) per channel and the decoded image is ~mean 0, std 0.4 in [-1, 1].
    """
    from torch import nn

    for m in vae.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()

    def _standardise(conv: nn.Conv2d, feats: torch.Tensor, mean: float, std: float) -> None:
        y = conv(feats)
        mu = y.mean(dim=(0, 2, 3))
        sd = y.std(dim=(0, 2, 3)).clamp_min(1e-6)
        assert conv.bias is not None
        conv.weight.mul_((std / sd)[:, None, None, None])
        conv.bias.copy_((conv.bias - mu) * (std / sd) + mean)

    image = torch.rand(2, 3, 128, 128) * 2.0 - 1.0  # encoder sees [-1, 1] like the pipeline feeds it
    enc = vae.encoder.layers
    _standardise(enc[-1], enc[:-1](image.add(1).div(2)), mean=0.0, std=1.0)
    latents = torch.randn(2, vae.config.latent_channels, 16, 16)
    dec = vae.decoder.layers
    # DecoderTiny: y = layers(tanh(z / 3) * 3); image = 2 * y - 1 -> target y ~ 0.5 +- 0.2
    _standardise(dec[-1], dec[:-1](torch.tanh(latents / 3) * 3), mean=0.5, std=0.2)


def build_tiny_scheduler():
    """``FlowMatchEulerDiscreteScheduler`` as DreamLite runs it: dynamic exponential time shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.16,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
        invert_sigmas=False,
        shift_terminal=None,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        stochastic_sampling=False,
    )


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def build_tiny_components(seed: int = 0) -> TinyComponents:
    """Build all tiny components on CPU in fp32. Same ``seed`` -> bit-identical weights.

    Does not disturb the caller's global torch RNG state.
    """
    processor = build_tiny_processor()
    text_encoder = build_tiny_text_encoder(processor.tokenizer, seed=seed)
    unet = build_tiny_unet(seed=seed + 1)
    vae = build_tiny_vae(seed=seed + 2)
    scheduler = build_tiny_scheduler()
    return TinyComponents(unet=unet, vae=vae, text_encoder=text_encoder, processor=processor, scheduler=scheduler)


def tiny_pipeline(components: TinyComponents):
    """Wrap the components in a real ``diffusers.DreamLiteMobilePipeline`` (progress bar off)."""
    from diffusers import DreamLiteMobilePipeline

    pipe = DreamLiteMobilePipeline(
        text_encoder=components.text_encoder,
        tokenizer=components.processor.tokenizer,
        processor=components.processor,
        vae=components.vae,
        unet=components.unet,
        scheduler=components.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipe
