"""Optional learned scores: LPIPS (input vs output) and CLIP image similarity (input vs
output), computed only when the package and its weights are already on this machine. Nothing
is ever downloaded: otherwise the report says why the score was skipped."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CLIP_MODEL = "openai/clip-vit-base-patch32"
MAX_FRAMES = 32
"""Learned scores look at this many frames at most, spread over the video (they are slow on CPU)."""


def lpips_weights() -> tuple[Path | None, str]:
    """The AlexNet backbone file LPIPS would load, if it is in torch's hub cache."""
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed (pip install lpips; AlexNet weights in the torch hub cache)"
    import torch
    from torchvision.models import AlexNet_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    if not path.is_file():
        return None, f"LPIPS's AlexNet weights are not in the local torch hub cache ({path}); not downloaded"
    return path, ""


def clip_weights() -> tuple[str | None, str]:
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed (the diffusion extra)"
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(CLIP_MODEL, name) for name in ("config.json", "model.safetensors")]
    if not all(isinstance(f, str) for f in found):
        return None, f"{CLIP_MODEL} is not in the local Hugging Face cache; not downloaded"
    return CLIP_MODEL, ""


def _lpips(sources: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    import lpips
    import torch

    model = lpips.LPIPS(net="alex", verbose=False)

    def tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1

    with torch.no_grad():
        return float(model(tensor(sources), tensor(outputs)).mean())


def _clip(sources: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(CLIP_MODEL, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(CLIP_MODEL, local_files_only=True)
    with torch.no_grad():
        a, b = (model.get_image_features(**processor(images=list(f), return_tensors="pt")) for f in (sources, outputs))
        return float(torch.nn.functional.cosine_similarity(a, b).mean())


def availability() -> dict[str, str | None]:
    """Each learned score's name -> None when it can run here, else why it cannot."""
    out: dict[str, str | None] = {}
    for name, find in (("lpips", lpips_weights), ("clip", clip_weights)):
        try:
            where, reason = find()
        except ImportError as exc:  # torch missing: the CLI works without it
            where, reason = None, f"needs torch ({exc})"
        out[name] = None if where is not None else reason
    return out


def scores(
    available: dict[str, str | None], sources: Sequence[np.ndarray], outputs: Sequence[np.ndarray]
) -> dict[str, dict[str, object]]:
    """{"lpips": {...}, "clip": {...}}: each {"available": true, "mean": x, "frames": n} or
    {"available": false, "reason": why}."""
    result: dict[str, dict[str, object]] = {}
    for name, compute in (("lpips", _lpips), ("clip", _clip)):
        reason = available.get(name, "not checked")
        if reason is not None or not outputs:
            result[name] = {"available": False, "reason": reason or "no frames"}
            continue
        try:
            result[name] = {"available": True, "mean": compute(sources, outputs), "frames": len(outputs)}
        except Exception as exc:  # noqa: BLE001 - an optional score must never sink the report
            log.warning("%s skipped: %s", name, exc)
            result[name] = {"available": False, "reason": f"failed: {exc}"}
    return result
