"""Fleet settings and request forwarding between pods, in-process: one real server (preview
engine) as pod ls-0 and a FakePeer standing in for pod ls-1."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from pipeline.config import ConfigError
from server.cluster import CLIENT, FORWARDED, PEER_SECRET
from server.config import ClusterConfig, load_config

SECRET = "peer-secret-0123456789"


class FakePeer:
    """Pod ls-1: records what reaches it and answers as told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.delay_s = 0.0
        self.answer = b"v=0 fake answer"

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        await asyncio.sleep(self.delay_s)
        headers = {"Location": f"{request.path}/viewer-1", "ETag": '"abc"', "X-Internal": "not passed on"}
        return web.Response(status=201, body=self.answer, content_type="application/sdp", headers=headers)


@pytest.fixture
async def fake_peer():
    peer = FakePeer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", peer.handle)
    fake = TestServer(app)
    await fake.start_server()
    yield peer, str(fake.make_url("")).rstrip("/")
    await fake.close()


def fleet_of_two(peer_url: str) -> ClusterConfig:
    return ClusterConfig(
        pod_name="ls-0",
        peers=(("ls-1", peer_url), ("ls-9", "http://127.0.0.1:9")),
        peer_secret=SECRET,
        forward_timeout_s=0.5,
        admin_token="admin-token-0123456789",
    )


@pytest.fixture
async def pods(preview_server, fake_peer):
    peer, url = fake_peer
    _srv, base = await preview_server(cluster=fleet_of_two(url), offer_rate_per_min=60, offer_burst=2)
    return base, peer


@pytest.mark.server
async def test_a_foreign_pods_request_is_forwarded_once_with_bounded_headers(pods):
    base, peer = pods
    async with ClientSession() as http:
        headers = {"Content-Type": "application/sdp", "Authorization": "Bearer x", "Cookie": "not passed on"}
        async with http.post(f"{base}/whep/ls-1.tok?x=1", data=b"v=0 offer", headers=headers) as resp:
            assert resp.status == 201 and await resp.read() == b"v=0 fake answer"
            assert resp.headers["Location"] == "/whep/ls-1.tok/viewer-1" and resp.headers["ETag"] == '"abc"'
            assert "X-Internal" not in resp.headers
            assert resp.headers["Access-Control-Allow-Origin"] == "*"  # CORS like any WHEP answer
        method, path, sent, body = peer.seen[-1]
        assert (method, path, body) == ("POST", "/whep/ls-1.tok?x=1", b"v=0 offer")
        assert sent[FORWARDED] == "ls-0" and sent[CLIENT] == "127.0.0.1" and sent[PEER_SECRET] == SECRET
        assert sent["Authorization"] == "Bearer x" and "Cookie" not in sent

        # Already forwarded once: served here (an unknown link), never sent on again.
        async with http.delete(f"{base}/whip/ls-1.abc", headers={FORWARDED: "ls-2"}) as resp:
            assert resp.status == 404
        # Own pod, a name that is no peer, no pod at all: all answered here.
        for path in ("/whip/ls-0.abc", "/whip/ls-5.abc", "/whip/abc"):
            async with http.delete(f"{base}{path}") as resp:
                assert resp.status == 404, path
        assert len(peer.seen) == 1

        peer.delay_s = 2.0
        async with http.delete(f"{base}/whip/ls-1.slow") as resp:
            body = await resp.json()
            assert resp.status == 504 and body["error"]["code"] == "peer_timeout" and "ls-1" in body["error"]["message"]
        peer.delay_s, peer.answer = 0.0, b"x" * (2 * 1024 * 1024)
        async with http.delete(f"{base}/whip/ls-1.big") as resp:
            assert resp.status == 502 and (await resp.json())["error"]["code"] == "peer_unavailable"

        # A pod that is gone (nothing listens): the stream has ended, and the watch page says so.
        async with http.post(f"{base}/whip/ls-9.abc/prompt", json={"prompt": "x"}) as resp:
            body = await resp.json()
            assert resp.status == 404 and "ended" in body["error"]["message"] and "ls-9" in body["error"]["message"]
        async with http.get(f"{base}/watch/ls-9.tok") as resp:
            assert resp.status == 404 and "livestyle" in await resp.text()
        statuses = []
        for _ in range(3):  # dead links cost from the address's allowance (burst 2), as local ones do
            async with http.delete(f"{base}/whip/ls-9.abc") as resp:
                statuses.append(resp.status)
        assert statuses[-1] == 429, statuses


@pytest.mark.server
async def test_a_viewer_asks_the_owner_pod_for_turn_credentials(preview_server, fake_peer):
    """With access tokens on, a watch link is a viewer's credential for TURN: only its owner can tell."""
    peer, url = fake_peer
    token = "access-token-0123456789"
    _srv, base = await preview_server(cluster=fleet_of_two(url), auth_tokens=(token,))
    async with ClientSession() as http:
        async with http.get(f"{base}/api/ice-servers", headers={"Authorization": "Bearer ls-1.watch"}) as resp:
            assert resp.status == 201  # the fake's answer: forwarded
        assert peer.seen[-1][1] == "/api/ice-servers" and peer.seen[-1][2]["Authorization"] == "Bearer ls-1.watch"
        async with http.get(f"{base}/api/ice-servers", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200  # an access token: answered here
        assert len(peer.seen) == 1


@pytest.mark.server
async def test_forwarded_requests_count_as_their_client_only_with_the_peer_secret(pods):
    base, _peer = pods
    async with ClientSession() as http:
        statuses = []
        for i in range(4):  # burst 2 per address, but four different clients
            headers = {FORWARDED: "ls-1", CLIENT: f"203.0.113.{i}", PEER_SECRET: SECRET}
            async with http.get(f"{base}/watch/ls-0.nope", headers=headers) as resp:
                statuses.append(resp.status)
        assert statuses == [404] * 4
        statuses = []
        for i in range(4):  # a wrong secret: all of them are the sender's own address
            headers = {FORWARDED: "ls-1", CLIENT: f"198.51.100.{i}", PEER_SECRET: "wrong-secret-0123456789"}
            async with http.get(f"{base}/watch/ls-0.nope", headers=headers) as resp:
                statuses.append(resp.status)
        assert 429 in statuses
        # The admin endpoint is for the pod itself (its preStop hook), not for what the Ingress brings.
        headers = {FORWARDED: "ls-1", CLIENT: "203.0.113.50", PEER_SECRET: SECRET}
        async with http.post(f"{base}/admin/drain", headers=headers) as resp:
            assert resp.status == 403 and "this host only" in (await resp.json())["error"]["message"]


@pytest.mark.server
async def test_readyz_metrics_and_admin_on_a_single_server(preview_server):
    _srv, base = await preview_server(max_sessions=2)
    async with ClientSession() as http:
        for _ in range(100):
            async with http.get(f"{base}/readyz") as resp:
                body = await resp.json()
            if resp.status == 200:
                break
            await asyncio.sleep(0.05)
        assert body == {"ready": True, "reason": "ready", "free_slots": 2, "sessions": 0, "capacity": 2, "pod": None}
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert "livestyle_free_slots 2.0" in text and "livestyle_draining 0.0" in text
        async with http.post(f"{base}/admin/drain") as resp:  # no admin token configured: off
            assert resp.status == 404 and "--admin-token" in (await resp.json())["error"]["message"]


@pytest.mark.server
async def test_drain_with_wait_answers_once_sessions_are_gone(preview_server):
    token = "admin-token-0123456789"
    _srv, base = await preview_server(cluster=ClusterConfig(admin_token=token, drain_grace_s=0))
    async with ClientSession() as http:
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{base}/admin/drain?wait=1", headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["done"] is True
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["reason"] == "draining"
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert "livestyle_free_slots 0.0" in text and "livestyle_draining 1.0" in text


@pytest.mark.unit
def test_cluster_settings_from_flags_and_environment():
    env = {"LIVESTYLE_POD_NAME": "livestyle-0", "LIVESTYLE_PEER_URL_TEMPLATE": "http://{pod}.livestyle-headless:8080"}
    cluster = load_config(["--drain-grace", "5"], environ=env).cluster
    assert cluster.forwarding and cluster.drain_grace_s == 5
    assert cluster.peer_url("livestyle-12") == "http://livestyle-12.livestyle-headless:8080"
    # Only siblings in the same StatefulSet: a forged link names no other host.
    assert cluster.peer_url("evil") is None and cluster.peer_url("livestyle-x") is None
    assert load_config([], environ={}).cluster == ClusterConfig() and not ClusterConfig().forwarding
    peers = load_config(["--pod-name", "a-0"], environ={"LIVESTYLE_PEERS": "a-1=http://10.0.0.2:8080/"}).cluster
    assert peers.peer_url("a-1") == "http://10.0.0.2:8080"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"pod_name": "Pod_0"}, ["'Pod_0'", "DNS label", "--pod-name"]),
        ({"pod_name": "a-0", "peer_url_template": "http://x:8080"}, ["{pod}", "--peer-url-template"]),
        ({"peer_url_template": "http://{pod}:8080"}, ["--pod-name"]),
        ({"pod_name": "a-0", "peers": (("a-1", "ftp://x"),)}, ["'ftp://x'", "http://"]),
        ({"drain_grace_s": -1}, ["-1", "0..86400", "--drain-grace"]),
        ({"admin_token": "short"}, ["--admin-token", "16"]),
    ],
)
def test_cluster_settings_refused_say_what_and_how(kwargs, words):
    with pytest.raises(ConfigError) as info:
        ClusterConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
