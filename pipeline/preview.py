"""The CPU preview stylizer: a real, prompt-driven painterly filter.

Used when there is no GPU or no model weights. Per frame: centre-crop and resize to
the output size, edge-preserving smoothing (bilateral, at half resolution), a colour
transform through a 32x32x32 lookup table built once per prompt (palette quantisation
blended with the source colour), and dark ink lines from Canny edges. The look comes
from the prompt: style keywords pick the recipe, a hash of the text picks the palette,
so the same prompt always gives the same look. OpenCV releases the GIL, so the engine
thread does not stall the event loop.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.core import AdapterUnavailable, PromptRejected
from pipeline.messages import EngineInfo, FrameIn

log = logging.getLogger(__name__)

LUT_BITS = 5  # 32 levels per channel: finer than any palette, 96 KiB per style


@dataclass(frozen=True)
class PreviewStyle:
    palette: np.ndarray
    """(K, 3) uint8 RGB colours, sorted dark to light."""
    smooth_passes: int
    """Bilateral passes at half resolution (0 = none): more = flatter, more painterly."""
    edge_thresholds: tuple[int, int] | None
    """Canny low/high thresholds; None = no ink lines."""
    edge_darkness: float
    """How much an ink line darkens a pixel, 0..1."""
    mix: float
    """Share of the smoothed source colour kept over the palette colour, 0..1."""
    saturation: float
    """Saturation multiplier applied after the palette."""
    lut: np.ndarray
    """(32**3, 3) uint8: the whole colour transform, indexed by 5-bit RGB."""


@dataclass(frozen=True)
class _Recipe:
    hues: tuple[float, ...] | None  # fixed palette hues in 0..1, None = from the hash
    sat: float
    smooth_passes: int
    edges: tuple[int, int] | None
    edge_darkness: float
    mix: float
    saturation: float


# First keyword found wins; the text hash still varies hue within the recipe.
_RECIPES: tuple[tuple[tuple[str, ...], _Recipe], ...] = (
    (("pencil", "sketch", "charcoal", "graphite"), _Recipe((0.08,), 0.05, 1, (40, 90), 0.85, 0.0, 0.2)),
    (("watercolor", "watercolour", "pastel"), _Recipe(None, 0.35, 2, (90, 180), 0.35, 0.45, 0.9)),
    (("neon", "cyberpunk", "synthwave"), _Recipe((0.83, 0.5, 0.92, 0.58), 0.95, 1, (60, 130), 0.7, 0.15, 1.5)),
    (
        ("comic", "cartoon", "anime", "pop art", "ink"),
        _Recipe((0.0, 0.12, 0.6, 0.33), 0.9, 2, (50, 110), 0.9, 0.1, 1.3),
    ),
    (("van gogh", "starry", "impressionis"), _Recipe((0.62, 0.14, 0.58, 0.11), 0.8, 2, (80, 160), 0.45, 0.35, 1.3)),
    (("oil", "painting", "acrylic"), _Recipe((0.05, 0.09, 0.55, 0.13), 0.75, 3, (100, 200), 0.3, 0.4, 1.25)),
)
_DEFAULT_RECIPE = _Recipe(None, 0.7, 2, (70, 140), 0.5, 0.3, 1.15)


def style_for_prompt(prompt: str, seed: int = 0) -> PreviewStyle:
    """Deterministic: the same prompt text (case/whitespace-insensitive) and seed -> same
    style. Another seed (a "reroll") varies the palette within the prompt's recipe."""
    text = " ".join(prompt.lower().split())
    keyed = text if seed == 0 else f"{text}\0seed={seed}"
    digest = hashlib.blake2b(keyed.encode(), digest_size=16).digest()
    recipe = next((r for keys, r in _RECIPES if any(k in text for k in keys)), _DEFAULT_RECIPE)
    saturation = recipe.saturation * (1.25 if ("vibrant" in text or "vivid" in text) else 1.0)
    palette = _palette(recipe, digest, dark=("dark" in text or "night" in text), rerolled=seed != 0)
    lut = _build_lut(palette, recipe.mix, saturation)
    return PreviewStyle(
        palette=palette,
        smooth_passes=recipe.smooth_passes,
        edge_thresholds=recipe.edges,
        edge_darkness=recipe.edge_darkness,
        mix=recipe.mix,
        saturation=saturation,
        lut=lut,
    )


def _palette(recipe: _Recipe, digest: bytes, dark: bool, rerolled: bool = False) -> np.ndarray:
    k = 5 + digest[2] % 3
    # A rerolled fixed-hue recipe swings wider, or the new take would hardly show.
    jitter = (digest[0] / 255.0 - 0.5) * (0.3 if rerolled else 0.08)
    if recipe.hues is None:
        base = digest[0] / 255.0
        spread = (0.08, 0.5, 0.33)[digest[1] % 3]  # analogous / complementary / triadic
        hues: tuple[float, ...] = (base, base + spread, base - spread, base + spread / 2)
    else:
        hues = tuple(h + jitter for h in recipe.hues)
    top = 0.75 if dark else 0.97
    # A reroll also bends the light curve: visible even in a nearly grey (pencil) palette.
    gamma = 0.6 + 0.9 * digest[3] / 255.0 if rerolled else 1.0
    colours = []
    for i in range(k):
        value = 0.08 + (top - 0.08) * (i / (k - 1)) ** gamma
        hue = hues[i % len(hues)] % 1.0
        # Extremes less saturated so shadows and highlights stay readable.
        sat = recipe.sat * (1.0 - 0.5 * abs(2 * i / (k - 1) - 1) ** 2)
        colours.append(colorsys.hsv_to_rgb(hue, sat, value))
    palette = np.clip(np.round(np.array(colours) * 255), 0, 255).astype(np.uint8)
    # HSV value is not perceived lightness (a blue is darker than a yellow): order by luma.
    return palette[np.argsort(_luma(palette.astype(np.float32)), kind="stable")]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _build_lut(palette: np.ndarray, mix: float, saturation: float) -> np.ndarray:
    levels = (np.arange(1 << LUT_BITS, dtype=np.float32) + 0.5) * (256 >> LUT_BITS)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    src = np.stack([r, g, b], -1).reshape(-1, 3)
    pal = palette.astype(np.float32)
    # Nearest palette entry by luminance: keeps the picture's light structure, which is
    # what makes a recoloured frame still read as the same scene.
    idx = np.abs(_luma(src)[:, None] - _luma(pal)[None, :]).argmin(1)
    out = (1 - mix) * pal[idx] + mix * src
    grey = _luma(out)[:, None]
    out = grey + (out - grey) * saturation
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = image[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def stylize_image(image: np.ndarray, style: PreviewStyle, size: int = 512) -> np.ndarray:
    """One RGB uint8 frame (any size) -> stylized size x size RGB uint8."""
    frame = fit_square(image, size)
    half = cv2.resize(frame, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    for _ in range(style.smooth_passes):
        half = cv2.bilateralFilter(half, 7, 45, 7)
    smooth = cv2.resize(half, (size, size), interpolation=cv2.INTER_LINEAR)
    q = np.asarray(smooth, dtype=np.uint8) >> (8 - LUT_BITS)
    index = (q[..., 0].astype(np.uint16) << (2 * LUT_BITS)) | (q[..., 1].astype(np.uint16) << LUT_BITS) | q[..., 2]
    out = np.take(style.lut, index, axis=0)
    if style.edge_thresholds is not None and style.edge_darkness > 0:
        grey = cv2.cvtColor(half, cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(grey, *style.edge_thresholds)
        ink = cv2.resize(edges, (size, size), interpolation=cv2.INTER_LINEAR)
        keep = 1.0 - style.edge_darkness * (ink.astype(np.float32) / 255.0)
        out = (out * keep[..., None]).astype(np.uint8)
    return out


class PreviewBackend:
    """Backend for EngineCore: stylizes a batch frame by frame with per-session styles."""

    def __init__(
        self, size: int = 512, max_batch: int = 16, max_prompt_chars: int = 500, reason: str = "CPU preview stylizer"
    ) -> None:
        self.info = EngineInfo(
            kind="preview",
            model="preview-stylizer",
            reason=reason,
            output_size=size,
            max_batch=max_batch,
            max_prompt_chars=max_prompt_chars,
        )
        self.pipelined = False
        self._styles: dict[str, PreviewStyle] = {}
        self._takes: dict[str, tuple[str, int]] = {}  # session -> (prompt, seed)
        self._cache: dict[tuple[str, int], PreviewStyle] = {}

    def warmup(self, progress: Callable[[str], None]) -> None:
        progress("preview stylizer needs no warm-up")

    def check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.info.max_prompt_chars:
            raise PromptRejected(
                "prompt_too_long",
                f"prompt has {len(prompt)} characters; at most {self.info.max_prompt_chars} are allowed",
            )

    def _use(self, session_id: str, prompt: str, seed: int) -> None:
        # Small cache: sessions flipping between presets should not rebuild LUTs.
        key = (prompt, seed)
        style = self._cache.get(key)
        if style is None:
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            style = self._cache[key] = style_for_prompt(prompt, seed)
        self._takes[session_id] = key
        self._styles[session_id] = style

    def open_session(self, session_id: str, prompt: str) -> None:
        self._use(session_id, prompt, 0)

    def close_session(self, session_id: str) -> None:
        self._styles.pop(session_id, None)
        self._takes.pop(session_id, None)

    def set_prompt(self, session_id: str, prompt: str) -> None:
        self._use(session_id, prompt, self._takes[session_id][1])

    def reseed(self, session_id: str, seed: int) -> None:
        self._use(session_id, self._takes[session_id][0], seed)

    def submit(self, frames: Sequence[FrameIn]) -> list[np.ndarray]:
        size = self.info.output_size
        return [stylize_image(f.image, self._styles[f.session_id], size) for f in frames]

    def collect(self, ticket: list[np.ndarray]) -> list[np.ndarray]:
        return ticket

    def set_adapter_strength(self, session_id: str, value: float) -> None:
        raise AdapterUnavailable(
            "the preview engine has no temporal adapter (it needs the diffusion engine and --lllite)"
        )

    def close(self) -> None:
        self._styles.clear()
        self._takes.clear()
        self._cache.clear()
