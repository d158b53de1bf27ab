"""Fleet use, one pod per GPU (deploy/kubernetes): readiness, drain, and forwarding of the
requests for another pod's streams.

Session ids and watch tokens start with their owner pod's name and a dot, so any pod can tell
where a link lives. A request for a foreign pod's resource (a viewer's /watch or /whep, a WHIP
publisher's PATCH, DELETE or prompt, a page's close beacon) is forwarded there once, through
the StatefulSet's headless Service; media never passes through here (it flows between the
client and the owner pod through the TURN gateway). A forwarded request carries
X-Livestyle-Forwarded and is never forwarded again, so two pods cannot bounce it."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web

from server.access import Unauthorized, bearer
from server.config import ClusterConfig
from server.drain import DRAIN_NOTICE_S
from server.errors import Handler, HttpError
from server.keys import CONFIG, DRAINER, ENGINE, GATE, PEER_HTTP, REGISTRY

log = logging.getLogger(__name__)

FORWARDED = "X-Livestyle-Forwarded"
"""Set on a forwarded request (the forwarding pod's name): the receiver serves it itself."""
CLIENT = "X-Livestyle-Client"
"""The original client's address; believed only with the peer secret."""
PEER_SECRET = "X-Livestyle-Peer-Secret"
PASSED_REQUEST = (hdrs.CONTENT_TYPE, hdrs.AUTHORIZATION, hdrs.IF_MATCH, hdrs.ACCEPT)
PASSED_RESPONSE = (
    hdrs.CONTENT_TYPE,
    hdrs.LOCATION,
    hdrs.LINK,
    hdrs.ETAG,
    hdrs.RETRY_AFTER,
    hdrs.WWW_AUTHENTICATE,
    hdrs.CACHE_CONTROL,
    hdrs.ALLOW,
    "Accept-Patch",
    "Accept-Post",
)
MAX_ANSWER_BYTES = 1024 * 1024
"""Largest answer taken from a peer (an SDP answer is a few KiB, the watch page a few more)."""
ROUTED_PARAMS = ("token", "session_id")
"""Route parameters that name a resource, hence its owner pod."""


def owner_of(request: web.Request) -> str | None:
    """The pod named by the request's session id or watch token (for /api/ice-servers, by a
    watch token given as the bearer credential), None when it names none."""
    value = next((request.match_info[k] for k in ROUTED_PARAMS if k in request.match_info), None)
    if value is None and request.path == "/api/ice-servers":
        credential = bearer(request)
        if credential is not None and not request.app[GATE].policy.allows(credential):
            value = credential  # not an access token of ours: maybe a foreign pod's watch link
    if not value:
        return None
    pod, dot, _rest = value.partition(".")
    return pod if dot else None


@web.middleware
async def forward_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost (the body is read already): hands a foreign pod's request to that pod."""
    cluster = request.app[CONFIG].cluster
    if not cluster.forwarding:
        return await handler(request)
    if FORWARDED in request.headers:
        return await handler(request)
    owner = owner_of(request)
    if owner is None or owner == cluster.pod_name or request.method == hdrs.METH_OPTIONS:
        return await handler(request)
    base = cluster.peer_url(owner)
    if base is None:  # not a pod of this fleet: the local lookup answers (404, a failed attempt)
        return await handler(request)
    try:
        return await _forward(request, base, owner)
    except HttpError as exc:
        if exc.status != 404:
            raise
        if request.path.startswith("/watch/"):
            return await handler(request)  # the watch page itself, which explains the ended link
        request.app[GATE].failed(request, "a link to a pod that is gone")  # dead links cost, as locally
        raise


@web.middleware
async def peer_client_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Before the body is read (a request can only be cloned until then)."""
    cluster = request.app[CONFIG].cluster
    # Any server given the secret believes it (a media process behind --place-on need not
    # forward anything itself); _as_client checks it.
    if FORWARDED in request.headers and cluster.peer_secret is not None:
        request = _as_client(request, cluster)
    return await handler(request)


def _as_client(request: web.Request, cluster: ClusterConfig) -> web.Request:
    """A request a peer forwarded: with the right secret, it counts as the original client's
    (rate limits and logs), not as the forwarding pod's."""
    given, client = request.headers.get(PEER_SECRET), request.headers.get(CLIENT, "")
    if cluster.peer_secret is None or given is None:
        return request
    if not hmac.compare_digest(given.encode(errors="replace"), cluster.peer_secret.encode()):
        return request
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return request
    return request.clone(remote=client)


async def _forward(request: web.Request, base: str, owner: str) -> web.Response:
    cluster = request.app[CONFIG].cluster
    headers: dict[str, str] = {name: request.headers[name] for name in PASSED_REQUEST if name in request.headers}
    headers[FORWARDED] = cluster.pod_name or ""
    headers[CLIENT] = request.remote or ""
    if cluster.peer_secret is not None:
        headers[PEER_SECRET] = cluster.peer_secret
    body = await request.read() if request.body_exists else None
    timeout = cluster.forward_timeout_s
    try:
        async with asyncio.timeout(timeout):
            async with request.app[PEER_HTTP].request(
                request.method, base + request.rel_url.path_qs, data=body, headers=headers, allow_redirects=False
            ) as resp:
                answer = await _read_bounded(resp)
                kept = {name: resp.headers[name] for name in PASSED_RESPONSE if name in resp.headers}
                status = resp.status
    except TimeoutError:
        log.warning("forward %s %s to pod %s: no answer within %g s", request.method, _route(request), owner, timeout)
        raise HttpError(
            504, "peer_timeout", f"the server of this stream (pod {owner}) did not answer within {timeout:g} s; retry"
        ) from None
    except aiohttp.ClientConnectorError as exc:  # refused, or no such host: the pod is gone
        log.info("forward %s %s to pod %s: %s", request.method, _route(request), owner, exc.os_error or exc)
        raise HttpError(404, "not_found", f"this stream has ended: its server (pod {owner}) is gone") from None
    except aiohttp.ClientError as exc:
        log.warning("forward %s %s to pod %s failed: %r", request.method, _route(request), owner, exc)
        raise HttpError(502, "peer_unavailable", f"the server of this stream (pod {owner}) failed to answer") from None
    return web.Response(status=status, body=answer, headers=kept)


PLACE_PROBE_S = 1.0
"""How long a placement waits for each media process's /readyz."""


async def place(request: web.Request) -> web.Response | None:
    """With --place-on: hand a new session's request (a page's offer, a WHIP publish) to
    the media process with the most free slots, trying the next when one answers 503
    (it filled up meanwhile); None when this server takes its sessions itself."""
    cluster = request.app[CONFIG].cluster
    if not cluster.place_on or FORWARDED in request.headers:
        return None
    named = dict(cluster.peers)
    ranked = sorted(await _placement_slots(request.app, cluster), key=lambda nf: -nf[1])
    for name, slots in ranked:
        if slots <= 0:
            break
        try:
            answer = await _forward(request, named[name].rstrip("/"), name)
        except HttpError as exc:
            if exc.status != 404:  # a timeout or a broken answer: it may have taken the session
                raise
            log.warning("placing a session on %s failed (%s); trying the next", name, exc.message)
            continue  # refused: it never saw the offer
        if answer.status != 503:
            return answer
    raise HttpError(
        503,
        "no_capacity",
        f"every media process of this server is full or not ready ({len(ranked)} asked); retry in a minute",
        {hdrs.RETRY_AFTER: "30"},
    )


async def _placement_slots(app: web.Application, cluster: ClusterConfig) -> list[tuple[str, int]]:
    """(name, free slots) of each --place-on peer, asked concurrently."""
    named = dict(cluster.peers)
    free = await asyncio.gather(*(_free_slots(app[PEER_HTTP], named[n]) for n in cluster.place_on))
    return list(zip(cluster.place_on, free, strict=True))


async def _free_slots(http: aiohttp.ClientSession, base: str) -> int:
    """A media process's free slots by its /readyz; 0 when it does not answer in time."""
    try:
        async with asyncio.timeout(PLACE_PROBE_S):
            async with http.get(base.rstrip("/") + "/readyz", allow_redirects=False) as resp:
                body = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return 0
    slots = body.get("free_slots") if isinstance(body, dict) and body.get("ready") is True else 0
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and 0 < slots < 1_000_000 else 0


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise aiohttp.ClientPayloadError(f"answer over {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _route(request: web.Request) -> str:
    """The route's template for logs: a path can hold a live watch token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


async def peer_http(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one client session for forwarding (only opened when forwarding is on)."""
    connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=10)  # pods come and go: short DNS cache
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[PEER_HTTP] = session
        yield


async def readyz(request: web.Request) -> web.Response:
    """200 only while this server would take a new session: engine warm and healthy, a free
    slot, not draining. A readiness probe, so a fleet's Service sends offers elsewhere."""
    engine, registry = request.app[ENGINE], request.app[REGISTRY]
    free = registry.free_slots
    cluster = request.app[CONFIG].cluster
    if cluster.place_on:  # its sessions live in the media processes it places them on
        free = sum(slots for _, slots in await _placement_slots(request.app, cluster))
    reason = "ready"
    if registry.draining:
        reason = "draining"
    elif engine.state != "ready":
        reason = f"engine {engine.state}"
    elif free == 0:
        reason = "full"
    body = {
        "ready": reason == "ready",
        "reason": reason,
        "free_slots": free if engine.state == "ready" else 0,
        "sessions": len(registry),
        "capacity": registry.max_sessions,
        "pod": request.app[CONFIG].cluster.pod_name,
    }
    return web.json_response(body, status=200 if reason == "ready" else 503, headers={"Cache-Control": "no-store"})


async def admin_drain(request: web.Request) -> web.Response:
    """POST /admin/drain (Authorization: Bearer ADMIN_TOKEN, from this host only) starts the
    drain; ?wait=1 answers once it has finished (a preStop hook waits on it), else at once
    with 202."""
    cluster = request.app[CONFIG].cluster
    if cluster.admin_token is None:
        off = "the admin endpoints are off; start with --admin-token (LIVESTYLE_ADMIN_TOKEN)"
        raise HttpError(404, "not_found", off)
    if not _local(request.remote):  # the Ingress reaches every route: keep this one to the pod itself
        raise HttpError(403, "forbidden", "the admin endpoints answer requests from this host only (kubectl exec)")
    gate = request.app[GATE]
    credential = bearer(request)
    if credential is None or not hmac.compare_digest(credential.encode(errors="replace"), cluster.admin_token.encode()):
        gate.failed(request, "a wrong admin token")
        raise Unauthorized()
    drainer = request.app[DRAINER]
    drainer.start()
    done = False
    if request.query.get("wait") in ("1", "true"):
        done = await drainer.wait(drainer.grace_s + 10 * DRAIN_NOTICE_S)
    body = {"draining": True, "done": done, "sessions": len(drainer.registry), "grace_s": drainer.grace_s}
    return web.json_response(body, status=200 if done else 202)


def _local(remote: str | None) -> bool:
    try:
        return ipaddress.ip_address(remote or "").is_loopback
    except ValueError:
        return False


def add_routes(app: web.Application) -> None:
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/admin/drain", admin_drain)
