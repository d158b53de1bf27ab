"""The pages ask the browser for minimal playout delay on the stylized track (headless
Chromium against a `livestyle serve` subprocess, preview engine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_support import ARTIFACTS, CHROMIUM, LiveServer, chromium_flags, write_fake_camera
from media import DAVIS_DIR, davis_clip, ping_pong
from playwright.sync_api import Browser, Page, sync_playwright

from bench.transport import RECORD_PEERS_JS, VIDEO_RECEIVERS_JS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; scripts/setup-system.sh installs Debian's chromium")
    if not (DAVIS_DIR / "blackswan.mp4").is_file():
        pytest.fail(f"DAVIS clips are missing from {DAVIS_DIR}")
    ARTIFACTS.mkdir(exist_ok=True)
    camera = write_fake_camera(ARTIFACTS / "fake-camera-blackswan.y4m", ping_pong(davis_clip("blackswan")))
    with sync_playwright() as pw:
        args = chromium_flags(camera.resolve())
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    server = LiveServer.start("playout-delay")
    yield server
    assert server.stop() == 0, f"see {server.log_path}"


def new_page(browser: Browser, url: str) -> Page:
    page = browser.new_context().new_page()
    page.add_init_script(RECORD_PEERS_JS)
    page.goto(url)
    return page


def test_pages_ask_for_minimal_playout_delay(browser: Browser, server: LiveServer) -> None:
    host = new_page(browser, server.url)
    host.wait_for_function("document.getElementById('engine-badge').dataset.kind === 'preview'", timeout=WAIT_MS)
    host.click("#start")
    host.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=WAIT_MS)
    receivers = host.evaluate(VIDEO_RECEIVERS_JS)
    print(f"\nbroadcaster's video receiver: {receivers}")
    assert receivers and all(r["target"] == 0 and r["hint"] in (0, "absent") for r in receivers)

    host.wait_for_function("!document.getElementById('share').disabled", timeout=WAIT_MS)
    host.click("#share")
    host.wait_for_function("document.getElementById('share-link').value.includes('/watch/')", timeout=WAIT_MS)
    guest = new_page(browser, host.input_value("#share-link"))
    guest.wait_for_function("document.getElementById('remote').videoWidth === 512", timeout=WAIT_MS)
    receivers = guest.evaluate(VIDEO_RECEIVERS_JS)
    print(f"viewer's video receiver: {receivers}")
    assert receivers and all(r["target"] == 0 and r["hint"] in (0, "absent") for r in receivers)
    guest.context.close()
    host.click("#stop")
    server.wait_sessions(0, timeout=10)
    host.context.close()
