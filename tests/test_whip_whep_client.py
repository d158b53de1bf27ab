"""A WHIP/WHEP browser client nobody here wrote (medooze's whip-whep 1.2.0, vendored in
tests/whip_whep) in headless Chromium, on a page served from another origin than the
real `livestyle serve`: it publishes the fake camera over WHIP, plays the stylized stream
over WHEP, trickles its candidates with PATCH and DELETEs both resources, with no console
error. Then the pages' own TURN-credential requests on a server with access tokens."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser_support import LiveServer
from playwright.sync_api import Browser, Page
from test_browser import browser, fake_camera, playwright  # noqa: F401 - shared fixtures

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CLIENT_DIR = Path(__file__).resolve().parent / "whip_whep"
WAIT_MS = 20_000  # generous for a loaded 2-core CI machine; every wait ends on an event
TOKEN = "browser-test-token-0123456789"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The test page and the vendored client, from an origin of their own (another port)."""
    handler = functools.partial(QuietHandler, directory=str(CLIENT_DIR))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="whip-whep-page", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    server = LiveServer.start("whip-whep")
    yield server
    assert server.stop() == 0, f"see {server.log_path}"
    assert not server.log_problems(), server.log_problems()


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        return page


def test_whip_whep_js_publishes_plays_trickles_and_deletes(browser: Browser, server: LiveServer, page_origin):  # noqa: F811
    console = Console()
    context = browser.new_context()
    page = console.watch(context.new_page())
    page.goto(f"{page_origin}/page.html")
    page.wait_for_function("window.harnessReady === true", timeout=WAIT_MS)

    whep_url = page.evaluate("(url) => window.harness.publish(url)", f"{server.url}/whip?prompt=neon%20cyberpunk")
    assert whep_url.startswith(f"{server.url}/whep/")
    page.evaluate("(url) => window.harness.play(url)", whep_url)
    page.wait_for_function(
        "(() => { const s = window.harness.states(); return s.whip === 'connected' && s.whep === 'connected'; })()",
        timeout=WAIT_MS,
    )
    # Stylized frames arrive at the player.
    page.wait_for_function(
        """new Promise((resolve) => {
             const video = document.getElementById("remote");
             const seen = (now, meta) =>
               meta.presentedFrames >= 10 ? resolve(true) : video.requestVideoFrameCallback(seen);
             video.requestVideoFrameCallback(seen);
           })""",
        timeout=WAIT_MS,
    )
    assert server.sessions() == 1

    page.evaluate("() => window.harness.stop()")
    requests = page.evaluate("() => window.harness.requests()")
    print("\n".join(f"{r['method']} {r['url'].removeprefix(server.url)} -> {r['status']}" for r in requests))
    patches = [r for r in requests if r["method"] == "PATCH"]
    assert {r["url"].split("/")[3] for r in patches} == {"whip", "whep"}, requests  # both trickled
    assert all(r["status"] == 204 for r in patches), patches
    deletes = [r for r in requests if r["method"] == "DELETE"]
    assert len(deletes) == 2 and all(r["status"] in (200, 404) for r in deletes), deletes
    server.wait_sessions(0, timeout=10)
    context.close()
    assert not console.errors, console.errors


@pytest.fixture(scope="module")
def token_server() -> Iterator[LiveServer]:
    # A TURN server that is not there: the test only looks at who gets credentials for it.
    args = ("--auth-token", TOKEN, "--turn-url", "turn:127.0.0.1:9?transport=udp", "--turn-secret", "north")
    server = LiveServer.start("whip-whep-tokens", *args)
    yield server
    assert server.stop() == 0, f"see {server.log_path}"
    assert not server.log_problems(), server.log_problems()


def _turn_from(page: Page, action) -> list[dict]:
    with page.expect_response(lambda r: "/api/ice-servers" in r.url, timeout=WAIT_MS) as info:
        action()
    response = info.value
    assert response.status == 200, response.status
    return [s for s in response.json()["ice_servers"] if s["urls"][0].startswith("turn:")]


def test_the_pages_send_what_they_hold_for_turn_credentials(browser: Browser, token_server, page_origin):  # noqa: F811
    context = browser.new_context()
    publisher = context.new_page()
    publisher.goto(f"{page_origin}/page.html")
    publisher.wait_for_function("window.harnessReady === true", timeout=WAIT_MS)
    whep_url = publisher.evaluate(
        "([url, token]) => window.harness.publish(url, token)", [f"{token_server.url}/whip", TOKEN]
    )
    watch_token = whep_url.rsplit("/", 1)[1]

    viewer = context.new_page()  # the watch page holds only its link
    (turn,) = _turn_from(viewer, lambda: viewer.goto(f"{token_server.url}/watch/{watch_token}"))
    assert turn["username"].endswith(":livestyle") and turn["credential"]

    broadcaster = context.new_page()  # the main page holds the access token from #token=
    broadcaster.goto(f"{token_server.url}/#token={TOKEN}")
    broadcaster.wait_for_function("document.getElementById('engine-badge').dataset.kind === 'preview'")
    (turn,) = _turn_from(broadcaster, lambda: broadcaster.click("#start"))
    assert turn["credential"]
    context.close()
