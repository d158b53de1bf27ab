"""Access control for the endpoints that start GPU work: bearer tokens and a per-IP rate
limit. Watch links are separate capabilities and need neither."""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from pipeline.config import ConfigError


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


class AccessPolicy:
    """Checks `Authorization: Bearer <token>` against the configured tokens (constant-time
    comparison). No tokens configured = open server."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def require(self, request: web.Request) -> None:
        if not self._tokens:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        candidate = given.strip().encode()
        # Compare against every token so the time taken does not depend on which matched.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(candidate, token)
        if scheme.lower() != "bearer" or not ok:
            raise Unauthorized()


class RateLimiter:
    """Token bucket per client address: `per_minute` requests a minute on average, bursts up
    to `burst`. Remembers at most `max_clients` addresses (oldest forgotten first), so a
    flood of addresses cannot grow memory without bound."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, key: str, now: float | None = None) -> None:
        """Take one request from the key's bucket; RateLimited when it is empty."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
