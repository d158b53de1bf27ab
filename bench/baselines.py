"""The baseline: diffusers' DreamLiteMobilePipeline called once per frame, at its own
settings (the text encoder sees the frame at 512x512, the sequence as long as the prompt
needs) and at the engine's operating point (the frame at text_image_size, the sequence
padded to text_tokens), so the engine's speed-up compares the same work.

Only the processor the pipeline calls is wrapped: it records what the text encoder is
given and, for the matched point, resizes the image and pads the tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


class RecordingProcessor:
    """Stands in for the pipeline's Qwen3-VL processor."""

    def __init__(self, inner: Any, image_size: int | None = None, tokens: int | None = None) -> None:
        self.inner = inner
        self.image_size = image_size
        self.tokens = tokens
        self.seen: tuple[int, int] | None = None
        """(image side, sequence length) of the last call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        images = kwargs.get("images")
        if self.image_size is not None and images:
            side = self.image_size
            kwargs["images"] = [im.resize((side, side), Image.Resampling.LANCZOS) for im in images]
        if self.tokens is not None:
            kwargs.update(padding="max_length", max_length=self.tokens)
        out = self.inner(*args, **kwargs)
        self.seen = (kwargs["images"][0].width if kwargs.get("images") else 0, int(out["input_ids"].shape[1]))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_naive(
    components: Any,
    frames: Sequence[np.ndarray],
    prompt: str,
    size: int,
    matched: tuple[int, int] | None,
) -> dict[str, Any]:
    """One row: matched = (text image size, text tokens) of the engine, or None for the
    pipeline's own settings."""
    from pipeline.diffusion.naive import measure_naive

    processor = RecordingProcessor(components.processor, *(matched or (None, None)))
    measured = measure_naive(dataclasses.replace(components, processor=processor), frames, prompt, size)
    assert processor.seen is not None, "the pipeline never called its processor"
    return {
        "operating_point": "the engine's (text image and token length patched)" if matched else "diffusers' own",
        "text_image_size": processor.seen[0],
        "text_sequence_tokens": processor.seen[1],
        "steps": 1,
        "size": size,
        "frames": int(measured["frames"]),
        "fps": round(float(measured["fps"]), 2),
        "p50_ms": round(float(measured["p50_ms"]), 2),
        "p95_ms": round(float(measured["p95_ms"]), 2),
    }
