"""Sharing and remote use over real WebRTC (preview engine): watch links with WHEP
viewers, WHIP publishing, access tokens, rate limits and TURN credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time

import numpy as np
import pytest
from aiohttp import ClientSession
from http_support import SdpPeer
from media import MARK_Y, ClipTrack, LoopbackClient, davis_clip, ping_pong, read_stamp

from server.app import REGISTRY
from server.turn import TurnConfig

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(120)]

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def clip():
    return ping_pong(davis_clip("blackswan"))


def viewer() -> SdpPeer:
    peer = SdpPeer()
    peer.pc.addTransceiver("video", direction="recvonly")
    return peer


async def broadcaster(http, base, clip) -> tuple[LoopbackClient, dict]:
    client = LoopbackClient(base, ClipTrack(clip, fps=30), prompt="neon cyberpunk")
    await client.connect(http)
    await client.wait_frames(3)
    client.send(type="create_watch")
    watch = await client.wait_message(lambda m: m["type"] == "watch" and m["token"])
    return client, watch


async def test_viewers_receive_the_broadcasters_stylized_frames(preview_server, clip):
    srv, base = await preview_server()
    async with ClientSession() as http:
        source, watch = await broadcaster(http, base, clip)
        assert watch["path"] == f"/watch/{watch['token']}" and watch["expires_in_s"] > 3600
        async with http.get(f"{base}{watch['path']}") as page:
            assert page.status == 200 and "livestyle" in await page.text()

        watcher = viewer()
        status, _ = await watcher.post(http, f"{base}/whep/{watch['token']}")
        assert status == 201 and watcher.location.startswith(f"/whep/{watch['token']}/")
        assert (await source.wait_message(lambda m: m["type"] == "viewers" and m["count"] == 1))["count"] == 1
        await watcher.wait_frames(20)

        # Same frames (matched by their id stamps), each encoded by its own peer's encoder:
        # much closer to each other than to a frame a few steps away.
        mine = {read_stamp(r.image): r.image for r in source.received}
        pairs = [(i, img) for _, img in watcher.frames if (i := read_stamp(img)) is not None and i in mine]
        pairs = [(i, img) for i, img in pairs if i + 6 in mine]
        assert len(pairs) >= 10
        dist = lambda a, b: np.abs(a[:MARK_Y].astype(int) - b[:MARK_Y].astype(int)).mean()  # noqa: E731
        same = np.median([dist(mine[i], img) for i, img in pairs])
        other = np.median([dist(mine[i + 6], img) for i, img in pairs])
        assert same < 15 and same < 0.7 * other, (same, other)
        index, image = pairs[0]
        assert dist(image, clip[index % len(clip)]) > 15  # stylized, not the camera
        engine_steps = srv.app[REGISTRY].engine.stats.frames_out.value
        assert engine_steps <= len(source.received) + 40  # viewers cost no engine work

        async with http.delete(f"{base}{watcher.location}") as resp:
            assert resp.status == 200
        assert (await source.wait_message(lambda m: m["type"] == "viewers" and m["count"] == 0))["count"] == 0
        await watcher.close()
        await source.close()


async def test_revoked_expired_and_orphaned_links_are_404(preview_server, clip):
    srv, base = await preview_server(max_viewers=1)
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        source, watch = await broadcaster(http, base, clip)
        first = viewer()
        assert (await first.post(http, f"{base}/whep/{watch['token']}"))[0] == 201
        second = viewer()
        status, body = await second.post(http, f"{base}/whep/{watch['token']}")
        assert status == 503 and body["error"]["code"] == "viewers_full"
        await second.close()

        source.send(type="revoke_watch")
        await source.wait_message(lambda m: m["type"] == "watch" and m["token"] is None)
        async with http.get(f"{base}/watch/{watch['token']}") as page:
            assert page.status == 404
        third = viewer()
        status, body = await third.post(http, f"{base}/whep/{watch['token']}")
        assert status == 404 and body["error"]["code"] == "not_found"
        await third.close()
        for _ in range(50):  # revoking disconnects the viewers too
            if first.pc.connectionState == "closed" or not any(s.viewers for s in registry._sessions.values()):
                break
            await asyncio.sleep(0.1)
        assert not any(s.viewers for s in registry._sessions.values())
        await first.close()

        source.send(type="create_watch")
        fresh = await source.wait_message(lambda m: m["type"] == "watch" and m["token"] not in (None, watch["token"]))
        registry._watch[fresh["token"]].expires_at = time.monotonic() - 1  # as if 12 hours had passed
        async with http.get(f"{base}/watch/{fresh['token']}") as page:
            assert page.status == 404

        source.send(type="create_watch")
        last = await source.wait_message(lambda m: m["type"] == "watch" and m["token"] not in (None, fresh["token"]))
        await source.close()  # the broadcaster leaves: the link dies with the session
        for _ in range(50):
            if len(registry) == 0:
                break
            await asyncio.sleep(0.1)
        async with http.get(f"{base}/watch/{last['token']}") as page:
            assert page.status == 404


async def test_whip_publish_prompt_whep_and_delete(preview_server, clip):
    srv, base = await preview_server()
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        status, answer = await publisher.post(http, f"{base}/whip?prompt=pencil%20sketch")
        assert status == 201 and "m=video" in answer and "a=recvonly" in answer
        session_path = publisher.location
        assert session_path.startswith("/whip/") and len(registry) == 1
        link = publisher.headers["Link"]
        whep_path = link.split("</whep/")[1].split(">")[0]

        async with http.post(f"{base}{session_path}/prompt", json={"prompt": "neon cyberpunk"}) as resp:
            assert resp.status == 202 and (await resp.json())["seq"] == 1
        async with http.post(f"{base}{session_path}/prompt", data=b"{nope") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_json"

        watcher = viewer()
        assert (await watcher.post(http, f"{base}/whep/{whep_path}"))[0] == 201
        await watcher.wait_frames(10)

        async with http.delete(f"{base}{session_path}") as resp:
            assert resp.status == 200
        assert len(registry) == 0
        async with http.delete(f"{base}{session_path}") as resp:
            assert resp.status == 404
        async with http.post(f"{base}/whip", data=b"v=0", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415 and (await resp.json())["error"]["code"] == "unsupported_media_type"
        await watcher.close()
        await publisher.close()


async def test_tokens_guard_session_creation_and_never_reach_the_log(preview_server, clip, caplog):
    caplog.set_level(logging.DEBUG)
    srv, base = await preview_server(auth_tokens=(TOKEN,))
    registry = srv.app[REGISTRY]
    async with ClientSession() as http:
        async with http.get(f"{base}/api/config") as resp:
            assert (await resp.json())["auth_required"] is True
        for headers in ({}, {"Authorization": "Bearer wrong-token-000000000"}, {"Authorization": TOKEN}):
            async with http.post(f"{base}/offer", json={"sdp": "v=0", "type": "offer"}, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 401 and body == {
                    "error": {"code": "unauthorized", "message": "a valid access token is required"}
                }
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip"))[0] == 401
        assert len(registry) == 0
        await publisher.close()

        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip", auth=TOKEN))[0] == 201
        async with http.delete(f"{base}{publisher.location}") as resp:
            assert resp.status == 401  # the resource needs the token too
        async with http.delete(f"{base}{publisher.location}", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        await publisher.close()
    assert TOKEN not in caplog.text


async def test_offers_are_rate_limited_per_address(preview_server):
    _, base = await preview_server(offer_rate_per_min=60, offer_burst=2)
    async with ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.post(f"{base}/offer", data=b"{not json") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert (await resp.json())["error"]["code"] == "rate_limited"
        assert statuses == [400, 400, 429]


async def test_ice_servers_carry_short_lived_turn_credentials(preview_server):
    turn = TurnConfig(urls=("turn:turn.example.org:3478",), secret="north", ttl_s=600)
    _, base = await preview_server(turn=turn)
    async with ClientSession() as http:
        async with http.get(f"{base}/api/ice-servers") as resp:
            servers = (await resp.json())["ice_servers"]
    (entry,) = servers
    expiry, user = entry["username"].split(":")
    assert user == "livestyle" and 590 <= int(expiry) - time.time() <= 610
    expected = base64.b64encode(hmac.new(b"north", entry["username"].encode(), hashlib.sha1).digest()).decode()
    assert entry["credential"] == expected and entry["urls"] == ["turn:turn.example.org:3478"]
