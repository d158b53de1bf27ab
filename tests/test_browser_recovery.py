"""The page recovers by itself, through real headless Chromium: a server that dies mid-stream
and comes back on the same port (the page says so, reconnects with backoff and plays again
with the user's prompt), a reload on a one-seat server, a reconnect that finds the server
full, and an engine restart announced by the server."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import test_browser
from aiohttp import web
from browser_support import ROOT, LiveServer, free_port, http_json
from playwright.sync_api import Browser
from test_browser import NEW_PROMPT, LivePage, capture, distance_to_style, open_page, start_streaming, wait_for

from pipeline.config import EngineConfig
from pipeline.messages import SessionError
from server.app import REGISTRY, create_app
from server.config import ServerConfig

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

# The main browser tests' fixtures (Chromium with the DAVIS fake camera), used here too.
fake_camera, playwright, browser = test_browser.fake_camera, test_browser.playwright, test_browser.browser

# What Chromium itself logs while the server is down; anything else is the page's fault.
NETWORK_NOISE = re.compile(r"Failed to load resource|net::ERR_|ERR_CONNECTION_REFUSED")


def console_errors(live: LivePage) -> list[str]:
    return [line for line in live.console if line.startswith("error:") and not NETWORK_NOISE.search(line)]


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def page_state(live: LivePage) -> dict:
    return live.page.evaluate(
        "({state: window.livestyle.state(), kind: document.getElementById('message').dataset.kind,"
        " message: document.getElementById('message').textContent, reconnects: window.livestyle.reconnects?.()})"
    )


def seconds_until(live: LivePage, expression: str, what: str, timeout_ms: int = 20_000) -> float:
    start = time.monotonic()
    wait_for(live, expression, what, timeout_ms)
    return time.monotonic() - start


def test_page_reconnects_after_the_server_dies_and_keeps_the_prompt(browser: Browser, record_property) -> None:
    server = LiveServer.start("recovery")
    live = open_page(browser, server)
    try:
        start_streaming(live)
        live.page.locator("#prompt").fill(NEW_PROMPT)
        live.page.locator("#prompt").press("Enter")
        wait_for(live, "document.getElementById('prompt-status').textContent.startsWith('applied')", "prompt applied")
        default_prompt = live.prompt

        server.process.kill()  # SIGKILL: no goodbye on any socket; only missing pongs tell
        server.process.wait()
        noticed = seconds_until(live, "window.livestyle.state() === 'reconnecting'", "the page to notice")
        shown = page_state(live)
        print(f"\nrecovery: the page noticed the dead server after {noticed:.1f} s and says {shown['message']!r}")
        assert shown["kind"] == "reconnecting"
        assert "lost the connection to the server" in shown["message"].lower()
        assert "firewall" not in shown["message"].lower()
        assert live.page.evaluate("document.getElementById('remote').srcObject") is None  # no frozen frame
        assert live.page.is_enabled("#stop"), "the user can still give up"
        time.sleep(3)  # a few attempts fail while the server is away
        assert page_state(live)["state"] == "reconnecting"

        restarted_at = time.monotonic()
        server = LiveServer.start("recovery", port=port_of(server))
        wait_for(live, "window.livestyle.state() === 'connected' && window.livestyle.reconnects() === 1", "reconnect")
        wait_for(live, "document.getElementById('remote').videoWidth > 0", "video again")
        back = time.monotonic() - restarted_at
        record_property("page_noticed_dead_server_s", round(noticed, 2))
        record_property("page_back_after_restart_s", round(back, 2))
        print(f"recovery: playing again {back:.1f} s after the restart began (the server's own start-up included)")
        assert page_state(live)["kind"] == ""  # the reconnecting message is gone
        assert server.sessions() == 1

        shot = capture(live)  # made by the new server: with the prompt the user had chosen
        to_new, to_default = distance_to_style(shot, NEW_PROMPT), distance_to_style(shot, default_prompt)
        print(f"recovery: distance to the chosen style {to_new:.1f}, to the default style {to_default:.1f}")
        assert to_new < 0.6 * to_default
        assert live.page.input_value("#prompt") == NEW_PROMPT
        assert not console_errors(live), console_errors(live)
        live.page.click("#stop")
        server.wait_sessions(0, timeout=5)
    finally:
        live.page.context.close()
        server.stop()
    assert not server.log_problems(), server.log_problems()


def test_a_reload_gets_the_only_seat_back(browser: Browser, record_property) -> None:
    """A one-seat server and the same user reloading: after a normal reload (pagehide closes
    the peer connection and sends the close beacon) and after the tab crashed (no pagehide,
    no DTLS goodbye: the reloaded page sends the beacon it kept in sessionStorage)."""
    server = LiveServer.start("reload", "--max-sessions", "1")
    live = open_page(browser, server)
    try:
        start_streaming(live)
        live.page.reload()
        wait_for(live, "document.getElementById('engine-badge').dataset.kind === 'preview'", "the reloaded page")
        freed = server.wait_sessions(0, timeout=5)
        start_streaming(live)
        assert page_state(live)["kind"] == ""

        live.page.click("#stop")
        server.wait_sessions(0, timeout=5)

        # A tab that died without its pagehide (crashed, or its browser was killed) leaves a
        # live session behind. Playwright cannot reload a crashed page, so a real aiortc peer
        # stands in for that session, its close beacon in the tab's sessionStorage where the
        # dead page kept it.
        with subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "peer_process.py"), server.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        ) as orphan:
            try:
                assert orphan.stdout is not None
                event = json.loads(orphan.stdout.readline())
                assert event["event"] == "streaming" and server.sessions() == 1
                beacon = {"url": event["close_url"], "secret": event["close_secret"]}
                live.page.evaluate("(b) => sessionStorage.setItem('livestyle-close-beacon', JSON.stringify(b))", beacon)
                t0 = time.monotonic()
                live.page.reload()
                crashed_freed = server.wait_sessions(0, timeout=3)  # well before the 6 s heartbeat reaper
                start_streaming(live)  # gets the seat: no "server is full"
                crash_to_streaming = time.monotonic() - t0
            finally:
                orphan.kill()
        record_property("reload_seat_free_s", round(freed, 2))
        record_property("crash_reload_seat_free_s", round(crashed_freed, 2))
        print(
            f"\nreload: seat free {freed:.2f} s after a reload; with a dead page's session left behind, free "
            f"{crashed_freed:.2f} s after the reload began and streaming again {crash_to_streaming:.1f} s after it"
        )
        assert page_state(live)["kind"] == ""
        assert server.sessions() == 1
        assert not console_errors(live), console_errors(live)
    finally:
        live.page.context.close()
        assert server.stop() == 0
    assert not server.log_problems(), server.log_problems()


def test_a_full_server_on_reconnect_means_waiting_not_failing(browser: Browser) -> None:
    """The server comes back, but someone else took the only seat: the page keeps
    reconnecting (honouring Retry-After) and says why."""
    server = LiveServer.start("full-on-reconnect", "--max-sessions", "1")
    live = open_page(browser, server)
    other = open_page(browser, server)
    try:
        start_streaming(live)
        server.process.kill()
        server.process.wait()
        wait_for(live, "window.livestyle.state() === 'reconnecting'", "the page to notice")
        # The other page must take the seat first: the reconnecting page's offers fail as if
        # the network were down until then (else, on a loaded machine, it may win the race).
        live.page.route("**/offer", lambda route: route.abort())
        server = LiveServer.start("full-on-reconnect", "--max-sessions", "1", port=port_of(server))
        start_streaming(other)
        live.page.unroute("**/offer")
        wait_for(live, "document.getElementById('message').textContent.includes('full')", "the 'full' reason", 30_000)
        shown = page_state(live)
        print(f"\nfull on reconnect: {shown['message']!r}")
        assert shown["state"] == "reconnecting" and shown["kind"] == "reconnecting"
        # The server asks for Retry-After: 30; the next attempt is announced no sooner.
        assert int(re.search(r"in (\d+) s", shown["message"])[1]) >= 30
        assert live.page.is_enabled("#stop")
        live.page.click("#stop")
        assert page_state(live)["state"] == "closed"
        assert server.sessions() == 1
        assert not console_errors(live), console_errors(live)
    finally:
        live.page.context.close()
        other.page.context.close()
        server.stop()


class ThreadedServer:
    """The app in this process, on an event loop of its own thread, so a test can reach
    into the sessions (here: to deliver an engine event) while Playwright drives the page."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.app = create_app(ServerConfig(host="127.0.0.1", port=self.port, engine=EngineConfig(kind="preview")))
        self.runner = web.AppRunner(self.app)

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()

        async def up() -> None:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.call(up())
        deadline = time.monotonic() + 30
        while http_json(f"{self.url}/healthz")[1]["status"] != "ok":
            assert time.monotonic() < deadline, "the in-process server did not become healthy"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as server:
        yield server


def test_engine_restarting_is_shown_until_frames_flow_again(browser: Browser, threaded_server) -> None:
    live = open_page(browser, threaded_server)  # type: ignore[arg-type]
    try:
        start_streaming(live)

        async def restart_announced() -> None:
            (session,) = threaded_server.app[REGISTRY]._sessions.values()
            # What the engine client delivers to every live session while it rebuilds the engine.
            session.engine._events.put(SessionError(session.id, "engine_restarting", "the engine is being rebuilt"))

        threaded_server.call(restart_announced())
        wait_for(live, "document.getElementById('message').dataset.kind === 'engine-restarting'", "the restart")
        shown = page_state(live)
        print(f"\nengine restart: the page says {shown['message']!r} ({shown['state']})")
        assert shown["state"] == "engine restarting" and "restarting" in shown["message"]
        # The preview engine keeps producing: frames flow, so the notice clears by itself.
        cleared = seconds_until(live, "document.getElementById('message').dataset.kind === ''", "the notice to clear")
        print(f"engine restart: cleared {cleared:.1f} s later, with frames flowing")
        assert page_state(live)["state"] == "connected"
        assert not console_errors(live), console_errors(live)
    finally:
        live.page.context.close()


def test_backoff_and_retry_after_in_the_page_modules(browser: Browser, threaded_server) -> None:
    live = open_page(browser, threaded_server)  # type: ignore[arg-type]
    try:
        result = live.page.evaluate(
            """async () => {
              const { retryDelayMs } = await import('/static/js/reconnect.js');
              const { offerError } = await import('/static/js/errors.js');
              const many = (n, ra) => Array.from({ length: 200 }, () => retryDelayMs(n, ra));
              const full = offerError(503, { error: { code: 'server_full', message: 'full' } }, '30');
              const auth = offerError(401, null, null);
              return {
                first: many(0), fifth: many(4), late: many(20), retryAfter: many(0, 30), huge: many(0, 1e9),
                full: [full.kind, full.transient, full.retryAfterS], auth: [auth.kind, auth.transient],
                down: offerError(502, null, 'soon').transient,
              };
            }"""
        )
    finally:
        live.page.context.close()
    assert 250 <= min(result["first"]) and max(result["first"]) <= 500
    assert 4000 <= min(result["fifth"]) and max(result["fifth"]) <= 8000
    assert max(result["late"]) <= 15_000  # capped
    assert len(set(result["first"])) > 50  # jittered: pages that lost one server spread out
    assert 30_000 <= min(result["retryAfter"]) and max(result["retryAfter"]) <= 36_000
    assert max(result["huge"]) <= 72_000  # a silly Retry-After is bounded
    assert result["full"] == ["server-full", True, 30]
    assert result["auth"] == ["auth", False]
    assert result["down"] is True
