# ruff: noqa: F811 - the browser and server fixtures are test_browser's, imported by name
"""The page as a product, end to end in headless Chromium with a fake camera: recording and
snapshot downloads, stable share links with a QR code, the viewer page's style, viewer count,
clean output and ended state, the phone layout, and framing a 16:9 camera."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from browser_support import (
    ARTIFACTS,
    CHROMIUM,
    LiveServer,
    chromium_flags,
    decode_png,
    luma,
    mean_abs_diff,
    write_fake_camera,
)
from media import davis_clip, ping_pong
from playwright.sync_api import Browser, Playwright
from test_browser import (  # noqa: F401 - fixtures and helpers shared with the first browser tests
    WAIT_MS,
    LivePage,
    browser,
    capture,
    capture_until,
    fake_camera,
    open_page,
    playwright,
    server,
    start_streaming,
    wait_for,
)

from pipeline.preview import fit_square, style_for_prompt, stylize_image

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

RECORD_MS = 3000  # the recording must hold >= 2 s of frames; 3 s leaves room for start-up


@pytest.fixture(scope="module")
def live(browser: Browser, server: LiveServer) -> Iterator[LivePage]:
    live = open_page(browser, server, accept_downloads=True)
    start_streaming(live)
    yield live
    live.page.context.close()


def test_recording_downloads_a_playable_file(live: LivePage, tmp_path: Path) -> None:
    page = live.page
    wait_for(live, "!document.getElementById('record').disabled", "the Record button")
    page.click("#record")
    wait_for(live, "window.livestyle.recording()", "the recording to start")
    assert page.is_visible("#rec-badge")
    page.wait_for_timeout(RECORD_MS)
    timer = page.text_content("#rec-time")
    page.click("#record")
    wait_for(live, "!document.getElementById('rec-download').hidden", "the download link")
    assert not page.is_visible("#rec-badge")
    with page.expect_download() as info:
        page.click("#rec-download")
    download = info.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert path.suffix in (".webm", ".mp4")

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.pts, f.width, f.height) for f in container.decode(stream) if f.pts is not None]
        time_base = float(stream.time_base)
    seconds = (frames[-1][0] - frames[0][0]) * time_base
    size = path.stat().st_size
    print(f"\nrecording: {path.name}, {size} bytes, {len(frames)} frames over {seconds:.2f} s; timer {timer}")
    assert seconds >= 2.0, f"only {seconds:.2f} s of frames"
    assert len(frames) >= 10  # a stalled stream gives a handful at most; this machine gives far more
    assert {(w, h) for _, w, h in frames} == {(512, 512)}  # the stylized stream, not the camera
    assert timer and timer >= "0:02"


def test_snapshot_is_a_png_of_the_stylized_frame(live: LivePage, tmp_path: Path) -> None:
    with live.page.expect_download() as info:
        live.page.click("#snapshot")
    download = info.value
    assert download.suggested_filename.endswith(".png")
    data = Path(download.path()).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = decode_png(data)
    assert image.shape == (512, 512, 3)
    # Closer to the preview engine's rendering of some camera frame than to any camera frame.
    clip = davis_clip("blackswan")
    style = style_for_prompt(live.prompt)
    to_style = min(float(np.abs(image.astype(int) - stylize_image(f, style).astype(int)).mean()) for f in clip)
    to_camera = min(float(np.abs(image.astype(int) - f.astype(int)).mean()) for f in clip)
    print(f"\nsnapshot: distance to the preview rendering {to_style:.1f}, to the camera {to_camera:.1f}")
    # A camera frame would sit a few units from the clip (video coding only) and far from the
    # rendering; the snapshot of the stylized video is the other way round.
    assert to_camera > 15, "the snapshot is a camera frame"
    assert to_style < 0.8 * to_camera, "the snapshot is not the stylized frame"
    assert luma(image).std() > 20, "blank snapshot"


def read_qr(png: bytes) -> str:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    text, _points, _ = cv2.QRCodeDetector().detectAndDecode(image)
    return text


def test_share_link_survives_a_second_press_qr_viewer_page_and_renew(
    live: LivePage, browser: Browser, server: LiveServer
) -> None:
    """Share twice: the same link, focus on the share panel, a QR code of the link. The
    viewer page shows the style and viewer count, a clean page shows the video only. New
    link: the old one's page says the stream has ended and offers no Watch button."""
    page = live.page
    wait_for(live, "!document.getElementById('share').disabled", "the Share button")
    page.click("#share")
    wait_for(live, "document.getElementById('share-link').value.includes('/watch/')", "the watch link")
    link = page.input_value("#share-link")
    assert page.evaluate("document.activeElement.id") == "share-panel"
    answers = page.evaluate("window.livestyle.watchAnswers()")
    page.click("#share")
    wait_for(live, f"window.livestyle.watchAnswers() > {answers}", "the second share answer")
    assert page.input_value("#share-link") == link, "a second Share replaced the link"
    assert read_qr(page.locator("#share-qr").screenshot()) == link

    viewer_context = browser.new_context(viewport={"width": 640, "height": 800})
    viewer = viewer_context.new_page()
    viewer.goto(link)
    viewer.wait_for_function("window.livestyleWatch.state() === 'live'", timeout=WAIT_MS)
    viewer.wait_for_function(f"document.getElementById('watch-style').textContent === {live.prompt!r}", timeout=WAIT_MS)
    viewer.wait_for_function("document.getElementById('watch-viewers').textContent === '1 watching'", timeout=WAIT_MS)

    clean = viewer_context.new_page()
    clean.set_viewport_size({"width": 800, "height": 450})
    clean.goto(link + "?clean=1")
    clean.wait_for_function("document.getElementById('remote').videoWidth === 512", timeout=WAIT_MS)
    assert not clean.is_visible("header") and not clean.is_visible("#toggle")
    box = clean.locator("#remote").bounding_box()
    assert box is not None and box["width"] >= 790 and box["height"] >= 440, box

    page.click("#share-renew")
    wait_for(live, f"document.getElementById('share-link').value !== {link!r}", "the new link")
    viewer.wait_for_function("window.livestyleWatch.state() === 'ended'", timeout=WAIT_MS)
    viewer.reload()
    viewer.wait_for_function("window.livestyleWatch.linkEnded()", timeout=WAIT_MS)
    assert "this stream has ended" in viewer.text_content("#message").lower()
    assert not viewer.is_visible("#toggle"), "an ended link must not offer Watch"
    assert not viewer.is_visible(".watch-player")  # no empty player either
    viewer_context.close()


def test_reroll_gives_a_new_take_and_own_prompts_become_chips(live: LivePage) -> None:
    page = live.page
    custom = "ink wash mountains"
    page.fill("#prompt", custom)
    page.press("#prompt", "Enter")
    wait_for(live, "document.getElementById('prompt-status').textContent.startsWith('applied')", "prompt applied")
    live.prompt = custom
    chip = page.locator("#history .preset", has_text=custom)
    assert chip.count() == 1 and chip.get_attribute("aria-pressed") == "true"

    wait_for(live, "!document.getElementById('reroll').disabled", "the Reroll button")
    page.click("#reroll")
    wait_for(live, "window.livestyle.seed() !== null", "the reroll's seed")
    seed = page.evaluate("window.livestyle.seed()")
    assert page.text_content("#prompt-status") == f"New take (seed {seed})."
    page.wait_for_timeout(1000)  # frames made after the reroll have come back
    new, old = style_for_prompt(custom, seed), style_for_prompt(custom)

    def distances(shot):
        to_new = min(mean_abs_diff(shot.remote, stylize_image(f, new)) for f in shot.local)
        return to_new, min(mean_abs_diff(shot.remote, stylize_image(f, old)) for f in shot.local)

    shot = capture_until(live, lambda s: (d := distances(s))[0] < 0.6 * d[1])
    to_new, to_old = distances(shot)
    apart = mean_abs_diff(stylize_image(shot.local[-1], new), stylize_image(shot.local[-1], old))
    print(f"\nreroll: seed {seed} ({apart:.1f} from the old take): distance {to_new:.1f}, to the old {to_old:.1f}")
    # The page picks no seed, the server does: only a take far enough from the old one tells.
    if apart > 15:
        assert to_new < 0.6 * to_old, "the stylized video does not follow the reroll"

    chip.click()  # a history chip applies its prompt again
    wait_for(live, f"document.getElementById('prompt').value === {custom!r}", "the chip's prompt")


def test_the_camera_inset_can_be_dragged_within_the_video(live: LivePage) -> None:
    page = live.page
    inset, video = page.locator("#camera-inset").bounding_box(), page.locator("#output-frame").bounding_box()
    assert inset is not None and video is not None
    x, y = inset["x"] + inset["width"] / 2, inset["y"] + inset["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y - 150, steps=5)
    page.mouse.move(video["x"] - 500, y - 150, steps=5)  # past the left edge: stops at it
    page.mouse.up()
    moved = page.locator("#camera-inset").bounding_box()
    assert moved is not None
    assert abs(moved["x"] - video["x"]) <= 2, "the inset left the video (or did not move)"
    assert abs(moved["y"] - (inset["y"] - 150)) <= 2


def test_stop_clears_the_prompt_status_and_disables_keeping(live: LivePage) -> None:
    page = live.page
    page.fill("#prompt", "pencil sketch")
    page.press("#prompt", "Enter")
    wait_for(live, "document.getElementById('prompt-status').textContent.startsWith('applied')", "prompt applied")
    assert page.get_attribute("text=pencil sketch >> nth=0", "aria-pressed") == "true"
    page.click("#stop")
    wait_for(live, "window.livestyle.state() === 'closed'", "the page to close")
    assert page.text_content("#prompt-status") == ""
    assert page.is_disabled("#record") and page.is_disabled("#snapshot")
    assert page.is_visible("#remote-empty")


def test_phone_layout_and_no_sideways_scroll(browser: Browser, server: LiveServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_function("document.getElementById('engine-badge').dataset.kind === 'preview'", timeout=WAIT_MS)
        assert page.is_visible("#remote-empty")  # instructions in the empty video area
        idle_start = page.eval_on_selector("#start", "b => getComputedStyle(b).backgroundColor")
        page.click("#start")
        page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=WAIT_MS)
        box = page.locator("#remote").bounding_box()
        assert box is not None
        print(f"\nphone: #remote at y={box['y']:.0f}, {box['width']:.0f}x{box['height']:.0f}")
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, "the stylized video is not in the first screen"
        assert box["width"] >= 0.9 * 390
        assert not page.is_visible("#remote-empty")
        # A disabled Start must not look like the ready one.
        assert page.eval_on_selector("#start", "b => getComputedStyle(b).backgroundColor") != idle_start
        # The camera inset sits inside the video; Side by side puts it beside (here: below).
        inset = page.locator("#camera-inset").bounding_box()
        assert inset is not None and inset["width"] < 0.5 * box["width"] and inset["y"] < box["y"] + box["height"]
        page.click("#layout-toggle")
        inset = page.locator("#camera-inset").bounding_box()
        assert inset is not None and inset["y"] >= box["y"] + box["height"]
        page.click("#layout-toggle")  # back, so later pages of this profile start with the inset

        page.set_viewport_size({"width": 320, "height": 640})
        page.wait_for_timeout(100)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"sideways scroll at 320 px: {widths}"
        page.click("#stop")
    finally:
        context.close()


def test_manifest_is_served_and_named(server: LiveServer) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/static/manifest.webmanifest", timeout=5) as response:
        manifest = json.load(response)
    assert manifest["name"] == "livestyle" and manifest["icons"]


# ---- a 16:9 camera: crop to square or fit with bars ----


@pytest.fixture(scope="module")
def wide_camera() -> Path:
    """1280x720: the clip stretched, with a bright green band on the outer 10 % of the left
    side and a red one on the right (what cropping to a square cuts off)."""
    frames = []
    for frame in ping_pong(davis_clip("blackswan"))[:30]:
        wide = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_AREA)
        wide[:, :128] = (0, 255, 0)
        wide[:, -128:] = (255, 0, 0)
        frames.append(wide)
    ARTIFACTS.mkdir(exist_ok=True)
    return write_fake_camera(ARTIFACTS / "fake-camera-1280x720.y4m", frames, min_seconds=1.0)


@pytest.fixture(scope="module")
def wide_browser(playwright: Playwright, wide_camera: Path) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=chromium_flags(wide_camera.resolve())
    )
    yield browser
    browser.close()


GRAB_JS = """
(id) => {
  const video = document.getElementById(id);
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas.toDataURL("image/png");
}
"""


def grab(live: LivePage, video_id: str) -> np.ndarray:
    import base64

    url = live.page.evaluate(GRAB_JS, video_id)
    return decode_png(base64.b64decode(url.split(",", 1)[1]))


def green_share(image: np.ndarray) -> float:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return float(((g > 200) & (r < 80) & (b < 80)).mean())


def red_share(image: np.ndarray) -> float:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return float(((r > 200) & (g < 80) & (b < 80)).mean())


def test_a_1280x720_camera_cropped_or_fitted(wide_browser: Browser, server: LiveServer) -> None:
    live = open_page(wide_browser, server)
    try:
        page = live.page
        page.select_option("#resolution", "720")  # the resolution hint: the whole 16:9 picture
        start_streaming(live)
        size = page.evaluate("['videoWidth', 'videoHeight'].map((k) => document.getElementById('local')[k])")
        assert size == [1280, 720], size  # crop sends the camera's own track; the server crops
        crop_local = fit_square(grab(live, "local"), 512)  # what the server makes of it
        crop_remote = grab(live, "remote")

        page.select_option("#framing", "fit")
        wait_for(live, "document.getElementById('local').videoWidth === 512", "the fitted camera")
        page.wait_for_timeout(1500)  # frames sent after the switch have come back stylized
        fit_local = grab(live, "local")
        fit_remote = grab(live, "remote")
        assert fit_remote.shape == crop_remote.shape == (512, 512, 3)  # the engine gets 512x512 either way

        bars = luma(fit_local[:90]).mean(), luma(fit_local[-90:]).mean()
        band_std = float(luma(fit_remote[:90]).std()), float(luma(crop_remote[:90]).std())
        print(
            f"\nframing: green share crop {green_share(crop_local):.3f} fit {green_share(fit_local):.3f}; "
            f"fit bars luma {bars[0]:.1f}/{bars[1]:.1f}; "
            f"stylized top band std fit {band_std[0]:.1f} crop {band_std[1]:.1f}"
        )
        assert green_share(crop_local) < 0.01, "cropping should cut off the side bands"
        assert green_share(fit_local) > 0.04, "fitting should keep the side bands"  # one band: 5.6 % of the frame
        assert max(bars) < 12, "fitting should add black bars above and below"
        assert band_std[0] < 0.5 * band_std[1], "the stylized video does not show the bars"
        assert green_share(fit_local[:, :256]) > 0.08 and red_share(fit_local[:, 256:]) > 0.08

        page.click("#mirror")  # left and right swap in what is sent
        page.wait_for_timeout(500)
        mirrored = grab(live, "local")
        assert page.get_attribute("#mirror", "aria-pressed") == "true"
        assert red_share(mirrored[:, :256]) > 0.08 and green_share(mirrored[:, 256:]) > 0.08, "not mirrored"
        page.click("#stop")
    finally:
        live.page.context.close()
