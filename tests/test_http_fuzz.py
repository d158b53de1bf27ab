"""Hostile HTTP clients against the real app (preview engine, the connection settings of
`livestyle serve`), over raw sockets: random requests to every route (methods, paths,
headers, bodies that are not UTF-8 or carry huge numbers), mangled real Chromium offers,
trickle-ICE fragments against live WHIP/WHEP resources. Every answer is below 500, the
server logs no error and leaks no failed task, and it keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import string
from urllib.parse import quote

import numpy as np
import pytest
from aiohttp import ClientSession
from browser_support import LiveServer
from http_support import OFFERS, SdpPeer, raw_exchange, request_bytes, start_edge_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media import ClipTrack

from server.keys import REGISTRY

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

ROUTES = [
    "/",
    "/offer",
    "/healthz",
    "/readyz",
    "/admin/drain",
    "/metrics",
    "/api/config",
    "/api/ice-servers",
    "/static/{a}",
    "/watch/{a}",
    "/watch/{a}/info",
    "/session/{a}/close",
    "/whip",
    "/whip/{a}",
    "/whip/{a}/prompt",
    "/whep/{a}",
    "/whep/{a}/{b}",
    "/{a}",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "BREW"]
CONTENT_TYPES = [
    "application/json",
    "application/sdp",
    "application/trickle-ice-sdpfrag",
    "text/plain; charset=utf-16",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/sdp; charset=latin-1",
    "",
    "\xff\xfe/\x01",
]
# Headers that change the framing of the request are fuzzed by the truncation tests instead.
FRAMING = {"content-length", "transfer-encoding", "connection", "host", "expect", "upgrade"}
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
GARBAGE_LINES = [
    "a=mid:",
    "a=mid:0",
    "a=setup:sideways",
    "a=group:BUNDLE 7 8",
    "a=group:BUNDLE",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=audio 0 RTP/AVP 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=text 9 UDP/TLS/RTP/SAVPF 96",
    "a=candidate:garbage",
    "a=candidate:1 1 udp 1 999.1.1.1 9 typ host",
    "a=rtpmap:abc VP8/90000",
    "a=rtpmap:96",
    "a=fmtp:96 x",
    "a=fmtp:300 apt=96",
    "a=ssrc:abc cname:x",
    "a=ssrc-group:FID x",
    "a=extmap:99999 urn:x",
    "a=fingerprint:md5 00",
    "a=fingerprint:sha-256",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "c=IN IP4 999.1.1.1",
    "c=IN IP7 x",
    "a=sctp-port:abc",
    "a=max-message-size:-1",
    "a=msid:",
    "a=rtcp-fb:* nack",
    "a=rtcp:abc",
    "a=simulcast:send 1;2",
    "a=rid:1 send",
    "a=inactive",
    "a=ice-lite",
    "a=end-of-candidates",
    "b=AS:-5",
    "v=1",
    "o=",
    "t=abc",
    "a=" + "x" * 5000,
]
HUGE_NUMBER_BODIES = [
    b'{"sdp": "v=0", "type": "offer", "prompt": "p", "x": 1' + b"0" * 5000 + b"}",
    b'{"v": 1, "type": "ping", "t": 1' + b"0" * 400 + b"}",
    b'{"prompt": 1e999}',
    b'{"prompt": -1e400, "sdp": 1' + b"0" * 300 + b"}",
    b'{"prompt": NaN}',
    b'{"prompt": Infinity}',
    b"[" * 60000,
    b'{"a":' * 20000,
    b"\xef\xbb\xbf{}",
    '{"prompt": "ünïcode"}'.encode("utf-16"),
    b'{"prompt": "\xff\xfe"}',
]


@st.composite
def mutated_sdp(draw: st.DrawFn, kind: str) -> str:
    """A real Chromium offer with a few lines deleted, duplicated, replaced or inserted, or
    cut short: malformed but mostly parseable, which is what breaks SDP handling."""
    lines = OFFERS[kind].split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "truncate", "swap"]))
        garbage = draw(st.one_of(st.sampled_from(GARBAGE_LINES), st.text(max_size=40).map(lambda t: "a=" + t)))
        if op == "delete":
            del lines[index]
        elif op == "duplicate":
            lines.insert(index, lines[index])
        elif op == "replace":
            lines[index] = garbage
        elif op == "insert":
            lines.insert(index, garbage)
        elif op == "truncate":
            lines = [*lines[:index], lines[index][: draw(st.integers(0, len(lines[index])))]]
        else:
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        if not lines:
            lines = ["v=0"]
    return "\r\n".join(lines)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
candidate_lines = st.one_of(
    st.sampled_from(
        [
            "1 1 udp 2122260223 192.0.2.1 61764 typ host",
            "1 1 udp 2122260223 3d2b7e5c-0b1a-4f6e-9c3d-1a2b3c4d5e6f.local 61764 typ host",
            "1 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active",
            "1 2 udp 2122260223 192.0.2.1 61764 typ host",
            "1 1 udp 1 evil.example.org 9 typ host",
            "1 1 udp x 192.0.2.1 9 typ host",
            "1 1 udp 1 192.0.2.1 99999 typ host",
            "1 1 sctp 1 192.0.2.1 9 typ host",
            "1 1 udp 1 192.0.2.1 9 typ wormhole",
            "short",
        ]
    ),
    st.text(max_size=80),
)


@st.composite
def fragments(draw: st.DrawFn) -> str:
    """RFC 8840 trickle-ICE fragments, well-formed or not."""
    lines = []
    if draw(st.booleans()):
        lines += [f"a=ice-ufrag:{draw(st.text(max_size=8))}", f"a=ice-pwd:{draw(st.text(max_size=24))}"]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"m={draw(st.sampled_from(['video', 'audio', 'application']))} 9 UDP/TLS/RTP/SAVPF 0")
        if draw(st.booleans()):
            lines.append(f"a=mid:{draw(st.sampled_from(['0', '1', '2', '', 'x']))}")
        lines += [f"a=candidate:{c}" for c in draw(st.lists(candidate_lines, max_size=4))]
        if draw(st.booleans()):
            lines.append("a=end-of-candidates")
    lines += draw(st.lists(st.sampled_from(GARBAGE_LINES), max_size=2))
    return "\r\n".join(lines) + "\r\n"


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=2000),
    st.sampled_from(HUGE_NUMBER_BODIES),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda sdp, prompt: json.dumps({"sdp": sdp, "type": "offer", "prompt": prompt}).encode(),
        mutated_sdp("browser"),
        st.text(max_size=20),
    ),
    mutated_sdp("whip").map(lambda s: s.encode("utf-8", "surrogatepass")),
    fragments().map(lambda s: s.encode("utf-8", "surrogatepass")),
)
segments = st.one_of(
    st.text(max_size=30).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["..", "%2e%2e", "%00", "%ff%fe", "a" * 300, "prompt", "x" * 22]),
)
header_names = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "Authorization",
            "If-Match",
            "Origin",
            "Accept",
            "Content-Encoding",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
            "Cookie",
            "Range",
            "X-Forwarded-For",
        ]
    ),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20),
).filter(lambda name: name.lower() not in FRAMING)
header_values = st.one_of(
    st.sampled_from(["Bearer x", "Bearer " + "x" * 9000, "gzip", "br", "bytes=0-1", "*", '"etag"', "null"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    template = draw(st.sampled_from(ROUTES))
    path = template.format(a=draw(segments), b=draw(segments))
    if draw(st.booleans()):
        path += "?prompt=" + draw(st.sampled_from(["%ff%fe", "x" * 600, "%00", quote("neon")]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type:
        headers.append(("Content-Type", content_type))
    method = draw(st.sampled_from(METHODS))
    return f"{method} {path}", request_bytes(method, path, headers, draw(bodies))


def assert_clean_answer(response, what: str) -> None:
    assert response.status is not None, f"no answer to {what}"
    assert response.status < 500, f"{response.status} for {what}: {response.body[:300]!r}"
    # Past aiohttp's parser (which answers text/plain) every API error is JSON. Files (the
    # pages, static/) keep aiohttp's own conditional-request answers (412, 416), and the
    # watch page loads for an ended link too (404) and explains it.
    method, _, path = what.partition(" ")
    page = path == "/" or path.startswith(("/static/", "/watch/", "/?"))
    parser_error = response.headers.get("content-type", "").startswith("text/plain")
    if response.status >= 400 and not (parser_error or page or method == "HEAD"):
        assert response.json()["error"]["code"], what


async def close_extra_sessions(registry, keep: set[str] = frozenset()) -> None:
    sessions = [s for s in list(registry._sessions.values()) if s.id not in keep]
    await asyncio.gather(*(s.aclose("test") for s in sessions))
    for session in registry._sessions.values():
        await asyncio.gather(*(v.aclose() for v in list(session.viewers.values()) if v.id not in keep))


async def assert_still_serving(port: int) -> None:
    response = await raw_exchange(port, [request_bytes("GET", "/healthz")])
    assert response.status == 200 and response.json()["status"] == "ok"


@pytest.fixture
async def edge():
    server, watch = await start_edge_server(max_sessions=64, offer_rate_per_min=0, max_viewers=64)
    yield server, watch
    await server.close()


@settings(FUZZ, max_examples=300)
@given(request=requests())
async def test_random_requests_to_every_route_get_clean_answers(edge, request):
    server, watch = edge
    what, data = request
    response = await raw_exchange(server.port, [data])
    assert_clean_answer(response, what)
    await close_extra_sessions(server.app[REGISTRY])
    assert not watch.problems(), f"after {what}: {watch.problems()}"


@settings(FUZZ, max_examples=150)
@given(kind=st.sampled_from(["browser", "whip"]), sdp=st.data())
async def test_mangled_chromium_offers_are_refused_or_answered(edge, kind, sdp):
    server, watch = edge
    text = sdp.draw(mutated_sdp(kind))
    if kind == "browser":
        data = request_bytes(
            "POST",
            "/offer",
            [("Content-Type", "application/json")],
            json.dumps({"sdp": text, "type": "offer"}).encode(),
        )
    else:
        data = request_bytes(
            "POST", "/whip", [("Content-Type", "application/sdp")], text.encode("utf-8", "surrogatepass")
        )
    response = await raw_exchange(server.port, [data])
    assert_clean_answer(response, f"{kind} offer")
    assert response.status in (200, 201, 400), response.body[:300]
    await close_extra_sessions(server.app[REGISTRY])
    await asyncio.sleep(0)  # let aiortc's background connect tasks run into whatever they would
    assert not watch.problems(), watch.problems()


@pytest.fixture
async def live_resources(edge):
    """A connected WHIP publisher and a WHEP viewer of its stream, for fuzzing the routes
    that only do something on a live resource."""
    server, watch = edge
    base = str(server.make_url("")).rstrip("/")
    frames = [np.full((64, 64, 3), v, np.uint8) for v in range(0, 250, 25)]
    async with ClientSession() as http:
        publisher = SdpPeer()
        publisher.pc.addTransceiver(ClipTrack(frames, fps=15, mark=False), direction="sendonly")
        assert (await publisher.post(http, f"{base}/whip"))[0] == 201
        token = publisher.headers["Link"].split("</whep/")[1].split(">")[0]
        watcher = SdpPeer()
        watcher.pc.addTransceiver("video", direction="recvonly")
        assert (await watcher.post(http, f"{base}/whep/{token}"))[0] == 201
        session_id = publisher.location.rsplit("/", 1)[1]
        viewer_id = watcher.location.rsplit("/", 1)[1]
        yield server, watch, {"session": session_id, "token": token, "viewer": viewer_id}
        await watcher.close()
        await publisher.close()


LIVE_ROUTES = [
    "/whip/{session}",
    "/whip/{session}/prompt",
    "/whep/{token}",
    "/whep/{token}/{viewer}",
    "/watch/{token}",
    "/watch/{token}/info",
]


@settings(FUZZ, max_examples=150)
@given(data=st.data())
async def test_live_whip_and_whep_resources_survive_fuzzing(live_resources, data):
    server, watch, live = live_resources
    path = data.draw(st.sampled_from(LIVE_ROUTES)).format(**live)
    method = data.draw(st.sampled_from(["POST", "PATCH", "GET", "OPTIONS", "PUT"]))  # DELETE last, below
    body = data.draw(
        st.one_of(
            fragments().map(lambda s: s.encode("utf-8", "surrogatepass")),
            mutated_sdp("whep").map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.sampled_from(HUGE_NUMBER_BODIES),
            st.binary(max_size=500),
        )
    )
    headers = [("Content-Type", data.draw(st.sampled_from(CONTENT_TYPES)))]
    if data.draw(st.booleans()):
        headers.append(("If-Match", data.draw(st.sampled_from(["*", '"nope"', "", 'W/"x"', "\xff"]))))
    response = await raw_exchange(server.port, [request_bytes(method, path, headers, body)])
    assert_clean_answer(response, f"{method} {path}")
    registry = server.app[REGISTRY]
    await close_extra_sessions(registry, keep={live["session"], live["viewer"]})
    assert registry.get(live["session"]) is not None, "the live WHIP session ended"
    assert not watch.problems(), watch.problems()


async def test_after_the_fuzz_the_live_resources_still_delete(live_resources):
    server, watch, live = live_resources
    for path in (f"/whep/{live['token']}/{live['viewer']}", f"/whip/{live['session']}"):
        response = await raw_exchange(server.port, [request_bytes("DELETE", path)])
        assert response.status == 200, response.body
    await assert_still_serving(server.port)
    assert len(server.app[REGISTRY]) == 0 and not watch.problems()


# ---- half-sent, truncated and oversized requests --------------------------------------------


@pytest.fixture
async def strict():
    """Timeouts of a second, so half-sent requests show their fate quickly."""
    server, watch = await start_edge_server(header_timeout_s=1.0, body_timeout_s=1.0, offer_rate_per_min=0)
    yield server, watch
    await server.close()


CUT_OFF = 8.0  # far above the 1 s timeouts: a loaded machine is late, never early


async def test_headers_that_trickle_in_are_cut_off(strict):
    server, watch = strict
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    response = await raw_exchange(server.port, [head[i : i + 1] for i in range(len(head))], pause=0.05)
    print(f"slow headers: closed={response.closed} after {response.seconds:.2f} s")
    assert response.closed and response.status is None
    assert 0.9 <= response.seconds < CUT_OFF
    idle = await raw_exchange(server.port, [b""], read_timeout=CUT_OFF)
    print(f"idle connection: closed={idle.closed} after {idle.seconds:.2f} s")
    assert idle.closed and idle.seconds < CUT_OFF
    await assert_still_serving(server.port)
    assert not watch.problems()


@pytest.mark.parametrize("how", ["short", "trickle"])
async def test_bodies_that_never_arrive_in_full_get_408(strict, how):
    server, watch = strict
    head = b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    body = b'{"sdp": "v=0", "type": "offer"' + b" " * 300
    chunks = [head, body[:40]] if how == "short" else [head, *(body[i : i + 1] for i in range(len(body)))]
    response = await raw_exchange(server.port, chunks, pause=0.0 if how == "short" else 0.05, read_timeout=CUT_OFF)
    print(f"{how} body: {response.status} closed={response.closed} after {response.seconds:.2f} s")
    assert response.status == 408 and response.json()["error"]["code"] == "request_timeout"
    assert response.closed and response.seconds < CUT_OFF
    await assert_still_serving(server.port)
    assert not watch.problems()


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", "a 20 KB header"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n", "300 headers"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "a 20 KB path"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
            "a TLS hello on plain HTTP",
        ),
        (b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "a negative Content-Length"),
        (b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "two lengths"),
        (
            b"POST /offer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "bad chunks",
        ),
        (
            b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
            "gzip",
        ),
    ],
)
async def test_malformed_http_is_refused_without_a_traceback(strict, head, what):
    server, watch = strict
    response = await raw_exchange(server.port, [head], read_timeout=CUT_OFF)
    print(f"{what}: {response.status} {response.body[:120]!r}")
    assert response.status is not None and 400 <= response.status < 500, what
    await assert_still_serving(server.port)
    assert not watch.problems(), watch.problems()


def _valid_requests() -> list[bytes]:
    offer = json.dumps({"sdp": OFFERS["browser"], "type": "offer"}).encode()
    return [
        request_bytes("POST", "/offer", [("Content-Type", "application/json")], offer),
        request_bytes("POST", "/whip?prompt=neon", [("Content-Type", "application/sdp")], OFFERS["whip"].encode()),
        request_bytes("POST", "/whip/abc/prompt", [("Content-Type", "application/json")], b'{"prompt": "x"}'),
        request_bytes("PATCH", "/whep/abc/def", [("Content-Type", "application/trickle-ice-sdpfrag")], b"a=mid:0\r\n"),
    ]


@settings(FUZZ, max_examples=30)
@given(which=st.integers(0, 3), cut=st.floats(0, 1), hang_up=st.booleans())
async def test_requests_cut_short_leave_the_server_serving(strict, which, cut, hang_up):
    """The client sends part of a real request, then vanishes (or just stops)."""
    server, watch = strict
    data = _valid_requests()[which]
    part = data[: int(len(data) * cut)]
    response = await raw_exchange(server.port, [part], close_early=hang_up, read_timeout=CUT_OFF)
    if not hang_up:
        assert response.closed and (response.status is None or response.status < 500), response.body[:200]
    await close_extra_sessions(server.app[REGISTRY])
    await assert_still_serving(server.port)
    assert not watch.problems(), watch.problems()


async def test_livestyle_serve_itself_bounds_half_sent_requests():
    """The real `livestyle serve` (its own runner settings, not the test server's): slow
    headers and short bodies are cut off, malformed HTTP and vanishing clients leave no
    traceback in its log, and it still shuts down cleanly."""
    server = await asyncio.to_thread(LiveServer.start, "hostile-http", "--header-timeout", "1", "--body-timeout", "1")
    try:
        port = int(server.url.rsplit(":", 1)[1])
        slow = await raw_exchange(port, [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: b\r\n"], pause=0.4)
        assert slow.closed and slow.status is None and slow.seconds < CUT_OFF, slow
        head = b"POST /whip HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 999\r\n\r\nv=0\r\n"
        short = await raw_exchange(port, [head], read_timeout=CUT_OFF)
        assert short.status == 408 and short.closed, short
        for data in (b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n"):
            assert (await raw_exchange(port, [data], read_timeout=CUT_OFF)).status == 400
        for data in _valid_requests():
            await raw_exchange(port, [data[: len(data) // 2]], close_early=True)
        body = b'{"sdp": "v=0", "type": "offer", "x": 1' + b"0" * 5000 + b"}"
        bad = await raw_exchange(port, [request_bytes("POST", "/offer", [], body)])
        assert bad.status == 400 and bad.json()["error"]["code"] == "bad_json"
        ok = await raw_exchange(port, [request_bytes("GET", "/healthz")])
        assert ok.status == 200
    finally:
        exit_code = await asyncio.to_thread(server.stop)
    assert exit_code == 0, server.log_text()[-2000:]
    assert not server.log_problems(), server.log_problems()
