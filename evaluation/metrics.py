"""Per-frame metrics of a stylized frame against its input (numpy/OpenCV/scikit-image, CPU).

Temporal ones take a pair of consecutive frames. Pixel errors are in 8-bit levels (0..255)."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.temporal import FARNEBACK, SceneCutDetector

HIGH_FREQUENCY = 0.25
"""Spatial frequency (cycles per pixel; Nyquist is 0.5) above which energy counts as detail."""


def gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def flow(src_gray: np.ndarray, dst_gray: np.ndarray) -> np.ndarray:
    """Farneback flow (the engine's parameters): pixel x of `src` moves to x + flow(x) in `dst`."""
    return np.asarray(cv2.calcOpticalFlowFarneback(src_gray, dst_gray, None, flags=0, **FARNEBACK))  # type: ignore[call-overload]


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape[:2]
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def warp(image: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """`image` (the previous frame) moved onto the current one: sample it at x + backward(x),
    where `backward` is the flow from the current to the previous frame."""
    gx, gy = _grid(backward.shape)
    return cv2.remap(
        image, gx + backward[..., 0], gy + backward[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels of the current frame whose motion is trusted: the backward flow lands inside the
    previous frame and the forward flow there leads back (Sundaram et al.'s forward-backward
    check); the rest are occluded or disoccluded and left out of the warp error."""
    gx, gy = _grid(backward.shape)
    x, y = gx + backward[..., 0], gy + backward[..., 1]
    h, w = backward.shape[:2]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    ahead = cv2.remap(forward, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    loop = np.sum((backward + ahead) ** 2, axis=-1)
    bound = 0.01 * (np.sum(backward**2, axis=-1) + np.sum(ahead**2, axis=-1)) + 0.5
    return inside & (loop <= bound)


def _masked_error(current: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> float:
    diff = np.abs(current.astype(np.float32) - warped.astype(np.float32)).mean(axis=-1)
    return float(diff[mask].mean()) if mask.any() else float("nan")


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def pair_values(
    prev_src: np.ndarray, cur_src: np.ndarray, prev_out: np.ndarray, cur_out: np.ndarray
) -> dict[str, float]:
    """Temporal metrics of the pair (previous, current): flow between the INPUT frames warps
    the previous OUTPUT onto the current one.
    - warp_error: masked mean |out_t - warp(out_t-1)|;
    - warp_floor: the same on the input (what flow errors and lighting changes leave even
      for a perfectly steady stylization);
    - valid_fraction: share of pixels that passed the forward-backward check;
    - flicker: mean |out_t - out_t-1| beyond the input's own mean |in_t - in_t-1| (0 when
      the output changes no more than the input did; a style that raises contrast raises it)."""
    a, b = gray(prev_src), gray(cur_src)
    forward, backward = flow(a, b), flow(b, a)
    mask = consistent(forward, backward)
    return {
        "warp_error": _masked_error(cur_out, warp(prev_out, backward), mask),
        "warp_floor": _masked_error(cur_src, warp(prev_src, backward), mask),
        "valid_fraction": float(mask.mean()),
        "flicker": max(0.0, _difference(cur_out, prev_out) - _difference(cur_src, prev_src)),
    }


def sobel_magnitude(image: np.ndarray) -> float:
    """Mean gradient magnitude (Sobel, 3x3) of the luma: how much edge there is."""
    g = gray(image).astype(np.float32)
    return float(np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)).mean())


def high_frequency_share(image: np.ndarray) -> float:
    """Share of the luma's spectral energy (DC left out, Hann-windowed against edge leakage)
    above HIGH_FREQUENCY cycles per pixel."""
    g = gray(image).astype(np.float32)
    g -= g.mean()
    h, w = g.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    power = np.abs(np.fft.rfft2(g * window)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    total = float(power[radius > 0].sum())
    return float(power[radius > HIGH_FREQUENCY].sum()) / total if total > 0 else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 1e-9 else float("nan")


def frame_values(src: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Sharpness (output/input ratios: < 1 = blurrier than the input) and edit strength (how
    far the output moved from the input: SSIM 1 = same structure; colour-histogram
    Bhattacharyya distance 0 = same colours, 1 = disjoint)."""
    from skimage.metrics import structural_similarity

    hist = cv2.compareHist(SceneCutDetector.histogram(src), SceneCutDetector.histogram(out), cv2.HISTCMP_BHATTACHARYYA)
    return {
        "sobel_ratio": _ratio(sobel_magnitude(out), sobel_magnitude(src)),
        "hf_ratio": _ratio(high_frequency_share(out), high_frequency_share(src)),
        "ssim": float(structural_similarity(gray(src), gray(out), data_range=255)),
        "hist_distance": float(hist),
    }
