import time

import cv2
import numpy as np
import pytest
from fakes import frame_in
from media import davis_clip

from pipeline.preview import PreviewBackend, fit_square, style_for_prompt, stylize_image

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def frame():
    return davis_clip("blackswan")[10]


def test_style_is_deterministic_and_prompt_dependent():
    a1, a2 = style_for_prompt("Oil painting,  vibrant colors"), style_for_prompt("oil painting, vibrant colors")
    assert np.array_equal(a1.lut, a2.lut)
    b = style_for_prompt("neon cyberpunk")
    assert not np.array_equal(a1.lut, b.lut)
    # Palettes run dark to light so the scene's light structure survives.
    luma = b.palette.astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luma) > 0)


def top_colour_share(image: np.ndarray, k: int = 16) -> float:
    _, counts = np.unique(image.reshape(-1, 3) // 8, axis=0, return_counts=True)
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def test_pencil_sketch_is_nearly_grey_and_neon_is_saturated(frame):
    pencil = stylize_image(frame, style_for_prompt("pencil sketch")).astype(int)
    neon = stylize_image(frame, style_for_prompt("neon cyberpunk")).astype(int)
    chroma = lambda img: np.abs(img - img.mean(axis=2, keepdims=True)).mean()  # noqa: E731
    assert chroma(pencil) < 8 < chroma(neon)


def test_output_is_a_stylized_version_of_the_input(frame):
    out = stylize_image(frame, style_for_prompt("oil painting, vibrant colors"))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    # Different from the input...
    assert np.abs(out.astype(int) - frame).mean() > 15
    # ...but the same scene: structure (luma) correlates strongly.
    luma = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float).ravel()  # noqa: E731
    assert np.corrcoef(luma(out), luma(frame))[0, 1] > 0.6
    # Palette quantisation: a few colours cover much more of the picture than in the photo.
    assert top_colour_share(out) > 2 * top_colour_share(frame)


@pytest.mark.parametrize("shape", [(480, 640, 3), (720, 1280, 3), (512, 512, 3), (240, 320, 3)])
def test_any_camera_size_becomes_a_centre_cropped_square(shape):
    image = np.zeros(shape, np.uint8)
    h, w = shape[:2]
    side = min(h, w)
    image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2] = 200  # the centre square
    assert fit_square(image, 512).min() == 200
    assert stylize_image(image, style_for_prompt("x")).shape == (512, 512, 3)


def test_backend_rejects_long_prompts_and_keeps_styles_per_session(frame):
    from pipeline.core import PromptRejected

    backend = PreviewBackend(max_prompt_chars=20)
    with pytest.raises(PromptRejected):
        backend.check_prompt("x" * 21)
    backend.open_session("a", "pencil sketch")
    backend.open_session("b", "neon cyberpunk")
    out_a, out_b = backend.submit([frame_in("a", frame), frame_in("b", frame)])
    assert not np.array_equal(out_a, out_b)
    assert np.array_equal(out_a, stylize_image(frame, style_for_prompt("pencil sketch")))


def test_single_core_speed_is_recorded(frame, record_property):
    """Informational (the target, >= 30 fps on one core, is tracked in bench results)."""
    cv2.setNumThreads(1)
    try:
        style = style_for_prompt("oil painting, vibrant colors")
        stylize_image(frame, style)
        t0 = time.perf_counter()
        for _ in range(20):
            stylize_image(frame, style)
        ms = (time.perf_counter() - t0) / 20 * 1000
    finally:
        cv2.setNumThreads(0)
    record_property("preview_ms_per_frame", ms)
    assert ms < 300  # only catches a pathological slowdown (loaded 2-core CI), not a timing target


def test_reseed_gives_another_take_of_the_same_prompt_and_keeps_it_across_prompts(frame):
    backend = PreviewBackend()
    backend.open_session("a", "pencil sketch")
    backend.open_session("b", "pencil sketch")
    (before,) = backend.submit([frame_in("a", frame)])
    backend.reseed("a", 1234)
    out_a, out_b = backend.submit([frame_in("a", frame), frame_in("b", frame)])
    assert np.abs(out_a.astype(int) - before.astype(int)).mean() > 2, "the reroll changed nothing"
    assert np.array_equal(out_b, before)  # the other session keeps its take
    assert np.array_equal(out_a, stylize_image(frame, style_for_prompt("pencil sketch", 1234)))  # deterministic
    backend.set_prompt("a", "neon cyberpunk")  # the seed stays with the session
    (neon,) = backend.submit([frame_in("a", frame)])
    assert np.array_equal(neon, stylize_image(frame, style_for_prompt("neon cyberpunk", 1234)))
    backend.reseed("a", 0)  # seed 0 is the prompt's original look
    (back,) = backend.submit([frame_in("a", frame)])
    assert np.array_equal(back, stylize_image(frame, style_for_prompt("neon cyberpunk")))
