"""Access control for the endpoints that start GPU work: bearer tokens and a per-address
rate limit, in which failed attempts (a wrong token, a dead watch link) count too. Watch
links are separate capabilities and need no access token."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from pipeline.config import ConfigError
from signaling.control import TokenBucket

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """Missing or wrong token. Deliberately without detail (which of the two, what was sent)."""


class RateLimited(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many requests")
        self.retry_after_s = retry_after_s


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """One token per line; blank lines and '#' comments ignored."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"tokens file {path} cannot be read: {exc.strerror}") from None
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ConfigError(f"tokens file {path} holds no tokens")
    return tokens


def bearer(request: web.Request) -> str | None:
    """The credential of `Authorization: Bearer <credential>`, None when there is none."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip() or None


def client_key(remote: str | None) -> str:
    """Whose bucket a request takes from: the IPv4 address, or the /64 of an IPv6 one (a
    single host commonly holds a whole /64, so per-address buckets would be free to rotate)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AccessPolicy:
    """Checks bearer tokens against the configured ones (constant-time comparison). No
    tokens configured = open server."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, credential: str | None) -> bool:
        if not self._tokens:
            return True
        candidate = (credential or "").encode()
        # Compare against every token so the time taken does not depend on which matched.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(candidate, token)
        return ok and credential is not None


class RateLimiter:
    """Token bucket per key: `per_minute` requests a minute on average, bursts up to
    `burst`. Remembers at most `max_clients` keys (oldest forgotten first), so a flood of
    addresses cannot grow memory without bound."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str, now: float | None = None) -> None:
        """RateLimited when the key's bucket is empty; takes nothing."""
        if self.rate <= 0:
            return
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.level(time.monotonic() if now is None else now) < 1.0:
            raise RateLimited(bucket.wait_s(time.monotonic() if now is None else now))

    def hit(self, key: str, now: float | None = None) -> None:
        """Take one request from the key's bucket; RateLimited when it is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket  # most recently used last: the oldest are forgotten first
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if not bucket.take(now):
            raise RateLimited(bucket.wait_s(now))


class AccessGate:
    """Tokens and the per-address limit together. An address whose bucket is empty gets 429
    before its token is even looked at; a failed attempt takes from the same bucket as an
    offer and is logged (never with what was sent), so guessing is as slow as offering."""

    LOG_LINES_PER_MIN = 20
    """Refusals logged at most this often (the rest are counted into the next line), so the
    log stays bounded even with the rate limit off."""

    def __init__(self, policy: AccessPolicy, limiter: RateLimiter) -> None:
        self.policy = policy
        self.limiter = limiter
        self._log_budget = RateLimiter(self.LOG_LINES_PER_MIN, self.LOG_LINES_PER_MIN, max_clients=1)
        self._unlogged = 0

    def admit(self, request: web.Request, *, offer: bool) -> None:
        """Let a request with a valid token (or any, on an open server) through; offer: it
        starts a session, so it costs from the bucket even when it succeeds."""
        key = client_key(request.remote)
        self.limiter.check(key)
        credential = bearer(request)
        if not self.policy.allows(credential):
            self.failed(request, "no access token" if credential is None else "a wrong access token")
            raise Unauthorized()
        if offer:
            self.limiter.hit(key)

    def failed(self, request: web.Request, what: str) -> None:
        """Count a failed attempt (RateLimited once the address is over its limit) and log it."""
        key = client_key(request.remote)
        self.limiter.hit(key)  # raises before logging: an address over its limit is not logged
        try:
            self._log_budget.hit("log")
        except RateLimited:
            self._unlogged += 1
            return
        # The route's template, not the path: a path can hold a live watch token.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "?"
        more = f" ({self._unlogged} more refusals not logged)" if self._unlogged else ""
        self._unlogged = 0
        log.warning("refused %s %s from %s: %s%s", request.method, route, key, what, more)
