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
from http_support import SdpPeer, without_candidates
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
        async with http.delete(f"{base}{watcher.location}") as resp:
            assert resp.status == 200  # it ended a moment ago: a player's late DELETE still succeeds
        async with http.delete(f"{base}/whep/{watch['token']}/never-was") as resp:
            assert resp.status == 404
        await watcher.close()
        await source.close()


async def test_share_again_keeps_the_link_until_renewed_and_info_shows_style_and_viewers(preview_server, clip):
    """A second Share returns the same link (links already sent keep working); renew makes a
    new one and ends the old one with its viewers; /watch/<token>/info tells the viewer page
    the style on now and the viewer count, and a dead link's info is a 404."""
    srv, base = await preview_server()
    async with ClientSession() as http:
        source, watch = await broadcaster(http, base, clip)
        source.send(type="create_watch")
        again = await source.wait_message(lambda m: m["type"] == "watch" and m is not watch)
        assert again["token"] == watch["token"]

        async with http.get(f"{base}/watch/{watch['token']}/info") as resp:
            assert resp.status == 200 and await resp.json() == {"prompt": "neon cyberpunk", "viewers": 0}
        first = viewer()
        assert (await first.post(http, f"{base}/whep/{watch['token']}"))[0] == 201
        source.send(type="set_prompt", prompt="pencil  sketch", seq=1)
        await source.wait_message(lambda m: m["type"] == "prompt_applied")
        async with http.get(f"{base}/watch/{watch['token']}/info") as resp:
            assert await resp.json() == {"prompt": "pencil sketch", "viewers": 1}

        source.send(type="create_watch", renew=True)
        renewed = await source.wait_message(lambda m: m["type"] == "watch" and m["token"] != watch["token"])
        assert renewed["token"]
        async with http.get(f"{base}/watch/{watch['token']}/info") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/watch/{renewed['token']}/info") as resp:
            assert resp.status == 200
        registry = srv.app[REGISTRY]
        for _ in range(50):  # the old link's viewer is disconnected
            if not any(s.viewers for s in registry._sessions.values()):
                break
            await asyncio.sleep(0.1)
        assert not any(s.viewers for s in registry._sessions.values())
        await first.close()
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
            assert resp.status == 200  # ended a moment ago: deleting it again is fine
        async with http.delete(f"{base}/whip/never-was") as resp:
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


# ---- trickle ICE (RFC 9725 PATCH) --------------------------------------------------------------


def fragment(peer: SdpPeer, *, end: bool = True, ufrag: str | None = None, candidates: list[str] | None = None) -> str:
    """The RFC 8840 fragment a trickling client sends for its first media section."""
    sdp = peer.pc.localDescription.sdp
    mid = next(line for line in sdp.split("\r\n") if line.startswith("a=mid:"))
    own_ufrag = next(line for line in sdp.split("\r\n") if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in sdp.split("\r\n") if line.startswith("a=ice-pwd:"))
    lines = [f"a=ice-ufrag:{ufrag}" if ufrag else own_ufrag, pwd, "m=video 9 UDP/TLS/RTP/SAVPF 0", mid]
    lines += [f"a=candidate:{c}" for c in (peer.candidates() if candidates is None else candidates)]
    lines += ["a=end-of-candidates"] if end else []
    return "\r\n".join(lines) + "\r\n"


async def patch(http: ClientSession, url: str, body: str, **headers: str) -> tuple[int, dict, dict | None]:
    headers = {"Content-Type": "application/trickle-ice-sdpfrag", **headers}
    async with http.patch(url, data=body, headers=headers) as resp:
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), payload


async def wait_connected(*peers: SdpPeer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while any(p.pc.connectionState != "connected" for p in peers):
        assert time.monotonic() < deadline, [p.pc.connectionState for p in peers]
        await asyncio.sleep(0.05)


def hidden_candidates() -> dict:
    """Neither side learns the other's candidates from the SDP: the server only gets the
    client's through PATCH, and the client can only answer the server's checks."""
    return {"offer_filter": without_candidates, "answer_filter": without_candidates}


async def test_whip_and_whep_clients_connect_through_trickled_candidates_only(preview_server, clip):
    _, base = await preview_server()
    async with ClientSession() as http:
        publisher, control = SdpPeer(), SdpPeer()
        for peer in (publisher, control):
            peer.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
            assert (await peer.post(http, f"{base}/whip", **hidden_candidates()))[0] == 201
            assert "a=candidate" not in peer.offer and peer.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
        etag = publisher.headers["ETag"]
        assert etag.startswith('"') and etag != control.headers["ETag"]
        status, headers, _ = await patch(http, f"{base}{publisher.location}", fragment(publisher), **{"If-Match": etag})
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
        await wait_connected(publisher)
        token = publisher.headers["Link"].split("</whep/")[1].split(">")[0]

        watcher = viewer()
        assert (await watcher.post(http, f"{base}/whep/{token}", **hidden_candidates()))[0] == 201
        location = f"{base}{watcher.location}"
        half = len(watcher.candidates()) // 2  # in two PATCHes, as a browser trickles them
        assert (await patch(http, location, fragment(watcher, end=False, candidates=watcher.candidates()[:half])))[
            0
        ] == 204
        assert (await patch(http, location, fragment(watcher, candidates=watcher.candidates()[half:])))[0] == 204
        await watcher.wait_frames(5)

        # The control got no candidates: the server had nothing to check, so it never connected.
        await asyncio.sleep(1.0)
        print("control without PATCH:", control.pc.connectionState)
        assert control.pc.connectionState != "connected"
        for peer in (watcher, publisher, control):
            await peer.close()


async def test_patch_answers_as_rfc_9725_says(preview_server, clip):
    _, base = await preview_server()
    async with ClientSession() as http:
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip"))[0] == 201
        url = f"{base}{publisher.location}"
        good = fragment(publisher, end=False)

        status, headers, body = await patch(http, url, fragment(publisher, ufrag="restart"), **{"If-Match": "*"})
        assert (status, body["error"]["code"]) == (422, "ice_restart_unsupported")
        assert headers["Access-Control-Allow-Origin"] == "*"
        status, _, body = await patch(http, url, good, **{"If-Match": '"someone-else"'})
        assert (status, body["error"]["code"]) == (412, "precondition_failed")
        status, headers, body = await patch(http, url, good, **{"Content-Type": "application/sdp"})
        assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
        assert headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
        for broken, words in [
            (good.replace("a=mid:0", "a=mid:7"), "a=mid:7"),
            (good + "a=candidate:1 1 udp 1 evil.example.org 9 typ host\r\n", "mDNS"),
            (good + "a=candidate:nonsense\r\n", "malformed"),
            (good.replace("a=mid:0\r\n", ""), "no a=mid"),
            (good + "".join(f"a=candidate:1 1 udp 1 192.0.2.{i} 9 typ host\r\n" for i in range(40)), "more than 32"),
        ]:
            status, _, body = await patch(http, url, broken)
            assert (status, body["error"]["code"]) == (400, "bad_fragment") and words in body["error"]["message"], body
        assert (await patch(http, url, good))[0] == 204  # If-Match is optional
        assert (await patch(http, url, ""))[0] == 204  # an empty fragment changes nothing
        async with http.delete(url) as resp:
            assert resp.status == 200
        status, headers, body = await patch(http, url, good)
        assert (status, body["error"]["code"]) == (404, "not_found") and headers["Access-Control-Allow-Origin"] == "*"
        await publisher.close()


# ---- CORS on every WHIP/WHEP answer --------------------------------------------------------------


async def test_every_whip_and_whep_answer_carries_cors(preview_server, clip):
    _, base = await preview_server(auth_tokens=(TOKEN,), max_viewers=0, max_sessions=1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sdp = {"Content-Type": "application/sdp"}
    as_json = {**auth, "Content-Type": "application/json"}
    async with ClientSession() as http:
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip", auth=TOKEN))[0] == 201
        token = publisher.headers["Link"].split("</whep/")[1].split(">")[0]
        cases = [
            ("POST", "/whip", {}, b"v=0", 401),
            ("POST", "/whip", {**auth, "Content-Type": "text/plain"}, b"v=0", 415),
            ("POST", "/whip", {**auth, **sdp}, publisher.offer.encode(), 503),  # server_full
            ("GET", "/whip", {}, b"", 405),
            ("DELETE", "/whip/nope", auth, b"", 404),
            ("POST", f"/whep/{token}", sdp, publisher.offer.encode(), 503),  # viewers_full
            ("POST", "/whep/nope", sdp, b"v=0\xff", 400),
            ("DELETE", f"/whep/{token}/nope", {}, b"", 404),
            ("POST", f"{publisher.location}/prompt", as_json, b'{"prompt": 1e999}', 400),
        ]
        for method, path, headers, body, expected in cases:
            async with http.request(method, f"{base}{path}", headers=headers, data=body) as resp:
                assert resp.status == expected, (method, path, resp.status, await resp.text())
                assert resp.headers.get("Access-Control-Allow-Origin") == "*", (method, path)
                assert "Location" in resp.headers["Access-Control-Expose-Headers"]
                assert (await resp.json())["error"]["code"]

        preflights = {
            "/whip": "POST, OPTIONS",
            "/whip/anything": "PATCH, DELETE, OPTIONS",
            "/whip/anything/prompt": "POST, OPTIONS",
            f"/whep/{token}": "POST, OPTIONS",
            "/whep/x/y": "PATCH, DELETE, OPTIONS",
        }
        for path, methods in preflights.items():
            request_headers = {"Origin": "https://player.example", "Access-Control-Request-Method": "PATCH"}
            async with http.options(f"{base}{path}", headers=request_headers) as resp:
                assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
                assert resp.headers["Access-Control-Allow-Methods"] == methods == resp.headers["Allow"]
                allowed = resp.headers["Access-Control-Allow-Headers"]
                assert all(h in allowed for h in ("Authorization", "Content-Type", "If-Match"))
                assert ("Accept-Patch" in resp.headers) == ("PATCH" in methods)
        async with http.delete(f"{base}{publisher.location}", headers=auth) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        for _ in range(20):  # each WHEP offer costs from the address's bucket
            async with http.post(f"{base}/whep/nope", headers=sdp, data=b"v=0") as resp:
                if resp.status == 429:
                    break
        assert resp.status == 429 and resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
        await publisher.close()


# ---- failed attempts and TURN credentials ----------------------------------------------------------


async def test_failed_token_attempts_count_in_the_rate_limit_and_are_logged_without_the_token(preview_server, caplog):
    caplog.set_level(logging.INFO)
    _, base = await preview_server(auth_tokens=(TOKEN,), offer_rate_per_min=6, offer_burst=3)
    guesses = [f"guess-{i:02d}-0123456789abcdef" for i in range(5)]
    async with ClientSession() as http:
        statuses = []
        for guess in guesses:
            async with http.post(f"{base}/offer", json={}, headers={"Authorization": f"Bearer {guess}"}) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
        assert statuses == [401, 401, 401, 429, 429]
        # Over the limit, the right token waits too: the address is what is limited.
        async with http.post(f"{base}/offer", json={}, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 429
    refusals = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert len(refusals) == 3 and all("POST /offer from 127.0.0.1: a wrong access token" in m for m in refusals)
    assert not any(g in caplog.text for g in guesses) and TOKEN not in caplog.text


async def test_guessing_watch_links_is_rate_limited(preview_server):
    _, base = await preview_server(offer_rate_per_min=6, offer_burst=4)
    async with ClientSession() as http:
        statuses = []
        for i in range(6):
            async with http.get(f"{base}/watch/guess{i}") as resp:
                statuses.append(resp.status)
        assert statuses == [404, 404, 404, 404, 429, 429]


async def test_turn_credentials_only_for_broadcasters_and_live_watch_links(preview_server, clip):
    turn = TurnConfig(urls=("turn:turn.example.org:3478",), secret="north", ttl_s=600)
    _, base = await preview_server(auth_tokens=(TOKEN,), turn=turn, offer_burst=20)

    async def ice(credential: str | None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        async with http.get(f"{base}/api/ice-servers", headers=headers) as resp:
            return resp.status, (await resp.json()).get("ice_servers")

    async with ClientSession() as http:
        assert await ice(None) == (200, [])
        status, servers = await ice(TOKEN)
        assert status == 200 and servers[0]["urls"] == ["turn:turn.example.org:3478"] and servers[0]["credential"]
        assert (await ice("not-a-token-or-link"))[0] == 401

        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(clip, fps=30), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip", auth=TOKEN))[0] == 201
        link = publisher.headers["Link"]
        assert '<turn:turn.example.org:3478>; rel="ice-server"; username="' in link and 'credential="' in link
        token = link.split("</whep/")[1].split(">")[0]
        status, servers = await ice(token)  # a viewer holding a live watch link
        assert status == 200 and servers[0]["username"].endswith(":livestyle")
        async with http.delete(f"{base}{publisher.location}", headers={"Authorization": f"Bearer {TOKEN}"}):
            pass
        assert (await ice(token))[0] == 401  # the link died with its broadcaster
        await publisher.close()


@pytest.mark.unit
def test_rate_limiter_buckets_burst_refill_and_forget_the_oldest():
    from server.access import RateLimited, RateLimiter

    limiter = RateLimiter(per_minute=60, burst=3, max_clients=2)
    for _ in range(3):
        limiter.hit("a", now=100.0)
    with pytest.raises(RateLimited) as refused:
        limiter.hit("a", now=100.0)
    assert refused.value.retry_after_s == pytest.approx(1.0)  # one a second
    with pytest.raises(RateLimited):
        limiter.check("a", now=100.5)  # check takes nothing and still refuses
    limiter.check("a", now=101.0)
    limiter.hit("a", now=101.0)  # refilled
    limiter.hit("b", now=101.0)
    limiter.hit("c", now=101.0)  # a third address: the least recently used ("a") is forgotten
    for _ in range(3):
        limiter.hit("a", now=101.0)  # a fresh, full bucket
