"""Screenshots of the page mid-stream for docs/screenshots/: desktop (1366x768) and phone
(390x844), headless Debian Chromium with a fake camera playing a DAVIS clip, against a
`livestyle serve --engine preview` subprocess.

    .venv/bin/python scripts/page_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser_support import ARTIFACTS, CHROMIUM, LiveServer, chromium_flags, write_fake_camera  # noqa: E402
from media import davis_clip, ping_pong  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

VIEWPORTS = {"desktop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
WAIT_MS = 20_000


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    camera = write_fake_camera(ARTIFACTS / "fake-camera-blackswan.y4m", ping_pong(davis_clip("blackswan")))
    server = LiveServer.start("screenshots")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=chromium_flags(camera.resolve()))
            for name, viewport in VIEWPORTS.items():
                phone = name == "phone"
                context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
                page = context.new_page()
                page.goto(server.url)
                page.wait_for_function("document.getElementById('engine-badge').dataset.kind !== ''", timeout=WAIT_MS)
                page.click("#start")
                page.wait_for_function("window.livestyle.state() === 'connected'", timeout=WAIT_MS)
                page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=WAIT_MS)
                page.wait_for_timeout(1500)  # a few seconds of stream, past the first frames
                path = out_dir / f"page-{name}.png"
                page.screenshot(path=str(path))
                print(f"wrote {path}")
                page.click("#stop")
                context.close()
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
