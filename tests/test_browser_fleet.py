"""The page in a fleet, through real headless Chromium: an offer refused as full is retried
(behind a Service the next one may land on a pod with room) before the page says "full", and
a drained server's notice makes the page reconnect at once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import test_browser
from browser_support import ROOT, LiveServer
from playwright.sync_api import Browser
from test_browser import open_page, start_streaming, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

fake_camera, playwright, browser = test_browser.fake_camera, test_browser.playwright, test_browser.browser

ADMIN = "admin-token-0123456789"


def rejected(server: LiveServer) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return float(re.search(r"^livestyle_sessions_rejected_total (\S+)$", text, re.M)[1])


def post(url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.status


def test_an_offer_refused_as_full_is_retried_before_the_page_says_so(browser: Browser) -> None:
    server = LiveServer.start("fleet-full", "--max-sessions", "1")
    live = open_page(browser, server)
    try:
        with subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "peer_process.py"), server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        ) as other:
            try:
                assert other.stdout is not None
                event = json.loads(other.stdout.readline())  # the only seat is taken
                assert event["event"] == "streaming" and server.sessions() == 1
                live.page.click("#start")
                deadline = time.monotonic() + 20
                while rejected(server) < 1:  # the page's first offer was refused as full...
                    assert time.monotonic() < deadline, "the page never offered"
                    time.sleep(0.05)
                # ...and the seat frees a moment later (another pod, as far as the page can tell).
                assert post(f"{server.url}{event['close_url']}", event["close_secret"].encode()) == 204
                wait_for(live, "window.livestyle.state() === 'connected'", "the retried offer to connect")
                wait_for(live, "document.getElementById('remote').videoWidth > 0", "the stylized video")
            finally:
                other.kill()
        kind = live.page.evaluate("document.getElementById('message').dataset.kind")
        assert kind == "", kind  # never said "full"
        print(f"\nfleet: connected after {rejected(server):.0f} refused offers")
        result = live.page.evaluate(
            """async () => {
              const { offerRetryDelayMs, OFFER_RETRIES } = await import('/static/js/reconnect.js');
              const { offerError } = await import('/static/js/errors.js');
              const many = (n) => Array.from({ length: 200 }, () => offerRetryDelayMs(n));
              const draining = offerError(503, { error: { code: 'server_draining', message: 'm' } }, '2');
              const engine = offerError(503, { error: { code: 'engine_unavailable', message: 'm' } }, null);
              return { delays: [0, 1, 2].map(many), retries: OFFER_RETRIES,
                       draining: [draining.kind, draining.busy, draining.retryAfterS], engineBusy: engine.busy };
            }"""
        )
        for n, delays in enumerate(result["delays"]):
            assert 250 * 2**n <= min(delays) and max(delays) <= 500 * 2**n and len(set(delays)) > 50, n
        # All retries together stay well inside the page's 12 s connect timeout.
        assert sum(500 * 2**n for n in range(result["retries"])) < 6000
        assert result["draining"] == ["server-full", True, 2] and result["engineBusy"] is False
    finally:
        live.page.context.close()
        server.stop()


def test_a_drain_notice_makes_the_page_reconnect(browser: Browser) -> None:
    server = LiveServer.start("fleet-drain", "--admin-token", ADMIN, "--drain-grace", "0")
    live = open_page(browser, server)
    try:
        start_streaming(live)
        assert post(f"{server.url}/admin/drain", headers={"Authorization": f"Bearer {ADMIN}"}) == 202
        # The server's own notice is what the page shows: it moved on the message, not on a dead connection.
        wait_for(live, "document.getElementById('message').textContent.includes('stopping')", "the drain notice")
        assert live.page.evaluate("window.livestyle.state()") == "reconnecting"
        # Its reconnect offers reach this (draining) server again, which refuses them; in a
        # fleet the Service would have sent them to another pod.
        deadline = time.monotonic() + 20
        while rejected(server) < 1:
            assert time.monotonic() < deadline, "the page did not try to reconnect"
            time.sleep(0.1)
        assert server.sessions() == 0
        live.page.click("#stop")
    finally:
        live.page.context.close()
        server.stop()
