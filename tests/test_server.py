"""The HTTP edge through aiohttp's test client (real app, fake or preview engine)."""

import asyncio
import json
from fractions import Fraction

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection
from fakes import FakeBackend, fake_spec

from pipeline.config import EngineConfig
from pipeline.runtime import RuntimeConfig
from server.app import ENGINE, REGISTRY, create_app
from server.config import ServerConfig

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
