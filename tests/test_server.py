"""The HTTP edge through aiohttp's test client (real app, fake or preview engine)."""

import asyncio
import gc
import json
from fractions import Fraction

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection
from fakes import FakeBackend, fake_spec
from http_support import OFFERS

from pipeline.config import ConfigError, EngineConfig
from pipeline.runtime import RuntimeConfig
from server.app import ENGINE, REGISTRY, create_app
from server.cli import serve
from server.config import ServerConfig, load_config
from server.errors import HttpServerLog
from server.turn import TurnConfig
from signaling.ice import IceServer

pytestmark = pytest.mark.server


@pytest.fixture
async def make_client():
    clients: list[TestClient] = []

    async def make(backend: FakeBackend | None = None, **config) -> TestClient:
        cfg = ServerConfig(port=0, engine=EngineConfig(kind="preview"), **config)
        app = create_app(cfg, fake_spec(backend) if backend else None)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        await client.app[ENGINE].wait_ready(5)
        return client

    yield make
    for client in clients:
        await client.close()


async def browser_like_offer(with_video: bool = True) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    if with_video:
        pc.addTransceiver("video", direction="sendrecv")
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def error_of(resp) -> tuple[int, str, str]:
    assert resp.content_type == "application/json"
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"]["message"]


async def test_healthz_config_page_and_metrics(make_client):
    client = await make_client()
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["sessions"] == 0 and health["capacity"] == 4
    assert health["engine"]["kind"] == "preview" and health["engine"]["reason"]
    config = await (await client.get("/api/config")).json()
    assert config["max_prompt_chars"] == 500 and config["protocol_version"] == 1
    page = await client.get("/")
    assert page.status == 200 and "<video" in await page.text()
    assert (await client.get("/static/app.js")).status == 200
    metrics = await (await client.get("/metrics")).text()
    for name in (
        "livestyle_sessions ",
        "livestyle_viewers ",
        "livestyle_frames_in_total",
        "livestyle_engine_step_ms_bucket",
        "livestyle_prompt_apply_ms_bucket",
        "livestyle_encode_ms_bucket",
        "livestyle_frames_dropped_total",
    ):
        assert name in metrics


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "bad_json"),
        (b"[]", "bad_request"),
        (json.dumps({"sdp": 5, "type": "offer"}).encode(), "bad_request"),
        (json.dumps({"sdp": "hello", "type": "offer"}).encode(), "bad_offer"),
        (json.dumps({"sdp": "v=0\r\nthis is not sdp\r\n", "type": "offer"}).encode(), "bad_offer"),
        (json.dumps({"sdp": "v=0\r\n", "type": "answer"}).encode(), "bad_offer"),
        (json.dumps({"sdp": "v=0\r\n", "type": "offer", "prompt": ["x"]}).encode(), "bad_request"),
    ],
)
async def test_malformed_offers_get_400_json(make_client, body, code):
    client = await make_client()
    status, got, message = await error_of(await client.post("/offer", data=body))
    assert (status, got) == (400, code) and message
    assert len(client.app[REGISTRY]) == 0


async def test_offer_without_video_and_with_long_prompt(make_client):
    client = await make_client()
    pc, sdp = await browser_like_offer(with_video=False)
    status, code, message = await error_of(await client.post("/offer", json={"sdp": sdp, "type": "offer"}))
    assert (status, code) == (400, "bad_offer") and "video" in message
    await pc.close()
    pc, sdp = await browser_like_offer()
    resp = await client.post("/offer", json={"sdp": sdp, "type": "offer", "prompt": "x" * 501})
    status, code, message = await error_of(resp)
    assert (status, code) == (400, "bad_offer") and "501" in message
    await pc.close()
    assert len(client.app[REGISTRY]) == 0


async def test_body_over_64_kib_is_413(make_client):
    client = await make_client()
    status, code, message = await error_of(await client.post("/offer", data=b"x" * (64 * 1024 + 1)))
    assert (status, code) == (413, "body_too_large") and "65536" in message


async def test_full_server_answers_503_and_frees_the_place_on_close(make_client):
    client = await make_client(max_sessions=1)
    pc1, sdp1 = await browser_like_offer()
    resp = await client.post("/offer", json={"sdp": sdp1, "type": "offer", "prompt": "watercolor"})
    answer = await resp.json()
    assert resp.status == 200 and answer["type"] == "answer" and "m=video" in answer["sdp"]
    assert answer["session_id"] and answer["engine"]["kind"] == "preview"
    pc2, sdp2 = await browser_like_offer()
    resp = await client.post("/offer", json={"sdp": sdp2, "type": "offer"})
    status, code, message = await error_of(resp)
    assert (status, code) == (503, "server_full") and "1 of 1" in message
    assert resp.headers["Retry-After"] == "30"
    health = await (await client.get("/healthz")).json()
    assert health["sessions"] == 1
    # Closing the session (as the reaper does) frees its place.
    await client.app[REGISTRY].get(answer["session_id"]).aclose("test")
    assert len(client.app[REGISTRY]) == 0
    resp = await client.post("/offer", json={"sdp": sdp2, "type": "offer"})
    assert resp.status == 200
    await pc1.close()
    await pc2.close()


async def test_engine_failure_turns_health_unhealthy_and_offers_503(make_client):
    backend = FakeBackend()
    client = await make_client(backend, runtime=RuntimeConfig(restart_limit=0))  # no restarts: fails for good
    engine = client.app[ENGINE]
    session = engine.open_session("probe", "p")
    backend.fail_next_step = RuntimeError("GPU fell off the bus")
    session.submit(np.zeros((32, 32, 3), np.uint8), 1, Fraction(1, 90000))
    for _ in range(200):
        if engine.state == "failed":
            break
        await asyncio.sleep(0.01)
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "unhealthy"
    assert "fell off the bus" in body["engine"]["error"]
    pc, sdp = await browser_like_offer()
    status, code, message = await error_of(await client.post("/offer", json={"sdp": sdp, "type": "offer"}))
    assert (status, code) == (503, "engine_unavailable") and "fell off the bus" in message
    await pc.close()


async def test_unknown_route_is_404_json(make_client):
    client = await make_client()
    status, code, _ = await error_of(await client.get("/nope"))
    assert (status, code) == (404, "not_found")
    status, code, _ = await error_of(await client.get("/offer"))
    assert (status, code) == (405, "method_not_allowed")


# ---- bodies a client can get wrong -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b'{"sdp": "v=0", "type": "offer", "x": 1' + b"0" * 5000 + b"}", "bad_json", "5001 characters"),
        (b'{"sdp": "v=0", "type": "offer", "x": 1' + b"0" * 400 + b"}", "bad_json", "at most 64"),
        (b'{"sdp": "v=0", "type": "offer", "x": 1e999}', "bad_json", "out of range"),
        (b'{"sdp": "v=0", "type": "offer", "x": NaN}', "bad_json", "NaN is not JSON"),
        (b"[" * 30000, "bad_json", "nested too deeply"),
        (b'{"sdp": "v=0\xff\xfe", "type": "offer"}', "bad_encoding", "UTF-8"),
        ('{"sdp": "v=0", "type": "offer"}'.encode("utf-16"), "bad_encoding", "UTF-8"),
        (b"", "empty_body", "empty"),
        (b"  \r\n", "empty_body", "empty"),
    ],
)
async def test_offer_bodies_that_are_not_plain_json_get_400(make_client, body, code, words):
    client = await make_client()
    status, got, message = await error_of(await client.post("/offer", data=body))
    assert (status, got) == (400, code) and words in message, message


async def test_compressed_bodies_are_refused(make_client):
    client = await make_client()
    resp = await client.post("/offer", data=b"\x1f\x8b\x08\x00", headers={"Content-Encoding": "gzip"})
    status, code, message = await error_of(resp)
    assert (status, code) == (415, "unsupported_encoding") and "gzip" in message


def mutate(sdp: str, drop: str | None = None, add: str | None = None, after: str = "a=mid:0") -> str:
    lines = [line for line in sdp.split("\r\n") if drop is None or not line.startswith(drop)]
    if add is not None:
        index = lines.index(after) + 1
        lines[index:index] = add.split("\r\n")
    return "\r\n".join(lines)


CHROMIUM = OFFERS["browser"]
VIDEO = CHROMIUM[CHROMIUM.index("m=video") : CHROMIUM.index("m=application")]


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        (mutate(CHROMIUM, drop="a=mid:"), "has no a=mid"),
        (mutate(CHROMIUM, drop="a=fingerprint:"), "no a=fingerprint"),
        (mutate(CHROMIUM, drop="a=setup:"), "no a=setup"),
        (mutate(CHROMIUM, drop="a=sendrecv"), "no direction"),
        (mutate(CHROMIUM, drop="a=ice-ufrag:"), "ice-ufrag"),
        (mutate(CHROMIUM, drop="a=rtcp-mux"), "rtcp-mux"),
        (mutate(CHROMIUM, drop="m=video"), "BUNDLE names 0"),
        (mutate(CHROMIUM, drop="a=group:", add="a=group:BUNDLE 0 1 7", after="t=0 0"), "names 7"),
        (mutate(CHROMIUM, add="a=mid:0", after="a=mid:1"), "repeats a=mid:0"),
        (mutate(CHROMIUM, drop="a=fingerprint:", add="a=fingerprint:md5 00:11", after="a=mid:0"), "fingerprint"),
        (CHROMIUM + VIDEO.replace("a=mid:0", "a=mid:9") * 8, "more than 8 media sections"),
        (mutate(CHROMIUM, add="a=setup:sideways"), "could not be parsed"),
    ],
)
async def test_real_offers_with_a_line_broken_get_400_and_leave_nothing(make_client, sdp, words):
    """A real Chromium offer with one thing wrong: a clear 400, no session, and none of the
    exceptions aiortc raises later, in tasks nobody awaits, when it takes such an offer."""
    loop_errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    client = await make_client()
    status, code, message = await error_of(await client.post("/offer", json={"sdp": sdp, "type": "offer"}))
    assert (status, code) == (400, "bad_offer"), message
    assert words in message, message
    await asyncio.sleep(0.3)  # aiortc's connect task would fail by now
    gc.collect()
    assert len(client.app[REGISTRY]) == 0 and not loop_errors, loop_errors


async def test_the_unbroken_chromium_offer_is_answered(make_client):
    client = await make_client()
    resp = await client.post("/offer", json={"sdp": CHROMIUM, "type": "offer"})
    assert resp.status == 200 and (await resp.json())["type"] == "answer"


async def test_405_keeps_allow_and_unknown_static_files_are_json(make_client):
    client = await make_client()
    resp = await client.put("/offer")
    status, code, _ = await error_of(resp)
    assert (status, code) == (405, "method_not_allowed") and resp.headers["Allow"] == "POST"
    for path in ("/static/nope.js", "/static/%ff%fe", "/static/../server/app.py", "/static/js/../../README.md"):
        status, code, _ = await error_of(await client.get(path))
        assert (status, code) == (404, "not_found"), path
    assert (await client.get("/static/js/whep.js")).status == 200


async def test_api_config_shares_no_credentials_when_tokens_are_on(make_client):
    turn = TurnConfig(urls=("turn:turn.example.org:3478",), secret="north")
    stun, static_turn = IceServer(("stun:stun.example.org:3478",)), IceServer(("turn:t.example:3478",), "u", "p")
    client = await make_client(auth_tokens=("t" * 20,), turn=turn, ice_servers=(stun, static_turn))
    servers = (await (await client.get("/api/config")).json())["ice_servers"]
    assert servers == [{"urls": ["stun:stun.example.org:3478"]}]
    open_client = await make_client(turn=turn, ice_servers=(stun, static_turn))
    servers = (await (await open_client.get("/api/config")).json())["ice_servers"]
    assert len(servers) == 3 and servers[2]["username"].endswith(":livestyle")


def test_serve_runs_with_the_edge_settings(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr("server.cli.web.run_app", lambda app, **kwargs: seen.update(kwargs))
    serve(ServerConfig(engine=EngineConfig(kind="preview"), header_timeout_s=3, body_timeout_s=4))
    assert seen["keepalive_timeout"] == 3 and seen["lingering_time"] == 2 and seen["auto_decompress"] is False
    assert isinstance(seen["logger"], HttpServerLog)


def test_http_timeouts_are_options():
    config = load_config(["--header-timeout", "3"], environ={"LIVESTYLE_BODY_TIMEOUT": "4.5"})
    assert (config.header_timeout_s, config.body_timeout_s) == (3.0, 4.5)
    for field, flag in (("header_timeout_s", "--header-timeout"), ("body_timeout_s", "--body-timeout")):
        with pytest.raises(ConfigError) as info:
            ServerConfig(**{field: 0})
        assert flag in str(info.value) and "0.5..600" in str(info.value)
