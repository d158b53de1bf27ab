"""The real page through a media process: headless Chromium talks WebRTC to a `livestyle
serve --engine-socket` process that runs no engine, and the preview engine runs in another
`livestyle serve --engine-host` process. What a person sees must not change: the engine
badge, the stylized camera, a prompt change that applies and says how long it took."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser_support import LiveServer, mean_abs_diff
from test_browser import (  # the page helpers and browser fixtures of the main browser tests
    browser,
    capture,
    distance_to_style,
    fake_camera,
    open_page,
    playwright,
    start_streaming,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
__all__ = ["browser", "fake_camera", "playwright"]  # fixtures, used by name


@pytest.fixture(scope="module")
def media_server() -> Iterator[tuple[LiveServer, LiveServer]]:
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "engine.sock")
        engine = LiveServer.start("engine-host", "--engine-host", sock)
        try:
            media = LiveServer.start("media-process", "--engine-socket", sock)
        except BaseException:
            engine.stop()
            raise
        yield engine, media
        codes = media.stop(), engine.stop()
        assert codes == (0, 0), f"exit codes {codes}; see {media.log_path}, {engine.log_path}"
        for server in (media, engine):
            assert not server.log_problems(), f"server log {server.log_path}: {server.log_problems()}"
        assert "media process m1 connected" in engine.log_text()


def test_the_page_streams_and_restyles_through_a_media_process(browser, media_server) -> None:
    engine, media = media_server
    live = open_page(browser, media)  # waits for the engine badge: the engine process's info
    try:
        start_streaming(live)
        assert media.sessions() == 1 and engine.sessions() == 0  # the session lives in the media process
        shot = capture(live)
        to_camera = min(mean_abs_diff(shot.remote, frame) for frame in shot.local)
        to_style = distance_to_style(shot, live.prompt)
        print(f"\nmedia process: |stylized - camera| {to_camera:.1f}, to the preview rendering {to_style:.1f}")
        assert to_camera > 15 and to_style < 0.6 * to_camera  # the engine process's rendering, not a copy

        new_prompt = "neon cyberpunk"
        live.page.locator("#prompt").fill(new_prompt)
        live.page.locator("#prompt").press("Enter")
        wait_for(live, "document.getElementById('prompt-status').textContent.startsWith('applied')", "prompt applied")
        after = capture(live)
        to_new, to_old = distance_to_style(after, new_prompt), distance_to_style(after, live.prompt)
        assert to_new < 0.6 * to_old, "the picture does not look like the new prompt's style"
        assert np.abs(after.remote.astype(int) - shot.remote.astype(int)).mean() > 5
    finally:
        live.page.context.close()
