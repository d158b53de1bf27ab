"""Model loading: a Hugging Face id or a local directory through diffusers'
DreamLiteMobilePipeline.from_pretrained, or 'tiny' random components built in code.
Every failure becomes one ModelLoadError that names the remedies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TINY = "tiny"
RANDOM_PREFIX = "random:"
"""random:DIR builds the full-size architectures from the reference config JSONs in DIR
with random weights (benchmarks: speed does not depend on weight values)."""


class ModelLoadError(RuntimeError):
    pass


def is_hub_id(model: str) -> bool:
    """'owner/name' that is not an existing path (and not one of our in-code models)."""
    if model == TINY or model.startswith(RANDOM_PREFIX) or model.startswith((".", "/", "~")):
        return False
    return not Path(model).expanduser().exists() and model.count("/") == 1


def remedies(model: str, revision: str | None) -> str:
    if is_hub_id(model):
        rev = f" --revision {revision}" if revision else ""
        fetch = f"download the weights first (`hf download {model}{rev}`) or pass a local directory with --model"
    else:
        fetch = "check that --model points at a diffusers model directory (with model_index.json) or give a Hub id"
    return (
        f"Remedies: {fetch}; set HF_TOKEN if the repository needs a login; or run the CPU preview with "
        "--engine preview (or --model tiny for a smoke test with random weights)."
    )


@dataclass(frozen=True)
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    processor: Any
    """Qwen3VLProcessor (only the naive-pipeline baseline needs it)."""


def weights_location(model: str, revision: str | None) -> tuple[str | None, str]:
    """Where the weights are without downloading anything: ('tiny'|'local'|'cache', detail)
    or (None, why not)."""
    if model == TINY:
        return TINY, "tiny random components built in code"
    if model.startswith(RANDOM_PREFIX):
        ref = Path(model[len(RANDOM_PREFIX) :]).expanduser()
        if (ref / "dreamlite_mobile_unet_config.json").is_file():
            return "random", f"full-size random weights from {ref}"
        return None, f"{ref} has no dreamlite_mobile_unet_config.json"
    path = Path(model).expanduser()
    if path.exists():
        if (path / "model_index.json").is_file():
            return "local", str(path)
        return None, f"{path} has no model_index.json (not a diffusers model directory)"
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any miss means "not cached"
        return None, f"{model} is not in the Hugging Face cache ({type(exc).__name__})"
    return "cache", local


def download_weights(model: str, revision: str | None) -> tuple[str | None, str]:
    """Try to fetch an HF repository into the cache: ('download', path) or (None, why not)."""
    if not is_hub_id(model):
        return None, "not a Hugging Face repository id"
    try:
        from huggingface_hub import snapshot_download

        return "download", snapshot_download(model, revision=revision)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: all mean "not available"
        return None, f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def load_components(model: str, revision: str | None, device: torch.device, dtype: torch.dtype) -> Components:
    if model == TINY:
        from pipeline.diffusion.tiny import build_tiny_components

        tiny = build_tiny_components(0)
        components = Components(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler, tiny.processor)
    elif model.startswith(RANDOM_PREFIX):
        components = build_reference_sized(device, dtype, Path(model[len(RANDOM_PREFIX) :]).expanduser())
    else:
        from diffusers import DreamLiteMobilePipeline

        is_dir = Path(model).expanduser().exists()
        try:
            pipe = DreamLiteMobilePipeline.from_pretrained(
                model, revision=None if is_dir else revision, torch_dtype=dtype
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the diffusion model {model!r}: {type(exc).__name__}: {exc}. "
                + remedies(model, None if is_dir else revision)
            ) from exc
        tokenizer = getattr(pipe.processor, "tokenizer", None) or pipe.tokenizer
        components = Components(pipe.unet, pipe.vae, pipe.text_encoder, tokenizer, pipe.scheduler, pipe.processor)
    for module in (components.unet, components.vae, components.text_encoder):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return components


def build_reference_sized(device: torch.device, dtype: torch.dtype, reference_dir: Path) -> Components:
    """Full-size DreamLite-mobile UNet and Qwen3-VL-2B from the reference configs, with random
    weights (speed does not depend on weight values), plus the tiny tokenizer (padded to the real
    vocabulary's special ids) - for GPU benchmarks where the real weights are not available."""
    import json

    from diffusers import AutoencoderTiny, DreamLiteUNetModel
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from pipeline.diffusion.tiny import build_tiny_processor, build_tiny_scheduler

    unet_cfg = json.loads((reference_dir / "dreamlite_mobile_unet_config.json").read_text())
    te_cfg = json.loads((reference_dir / "qwen3_vl_2b_text_encoder_config.json").read_text())
    with torch.device(device):
        unet = DreamLiteUNetModel.from_config(unet_cfg)
        vae = AutoencoderTiny(latent_channels=4)
        te = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**te_cfg))
    processor = build_tiny_processor()
    tokenizer = processor.tokenizer
    for module in (unet, vae, te):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # The tiny tokenizer's ids are small; map its special tokens onto the real ids the config names.
    te.config.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return Components(unet, vae, te, tokenizer, build_tiny_scheduler(), processor)
