"""Short-lived TURN credentials from a shared secret (the "TURN REST API" scheme).

coturn's `use-auth-secret` / `static-auth-secret` mode accepts any username of the form
`<expiry unix time>:<user>` whose password is base64(HMAC-SHA1(secret, username)). The
server hands each page such a pair, so the long-lived secret never reaches a browser and a
leaked credential stops working after `ttl_s`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass, field

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

TURN_SCHEMES = ("turn:", "turns:")
MIN_TTL_S = 60
MAX_TTL_S = 86400


def turn_credentials(secret: str, user: str, ttl_s: int, now: float) -> tuple[str, str]:
    """(username, password) valid until `now + ttl_s` for a TURN server sharing `secret`."""
    username = f"{int(now) + ttl_s}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnConfig:
    urls: tuple[str, ...]
    """TURN server URLs, each starting with turn: or turns: (e.g. turn:turn.example.org:3478?transport=udp)."""
    secret: str = field(repr=False)
    """The TURN server's static-auth-secret; kept out of repr so it never lands in logs."""
    ttl_s: int = 3600
    """Seconds a handed-out credential stays valid (60..86400)."""

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            # A bare string would be iterated character by character below; say so plainly.
            raise ConfigError(f"TURN urls must be a tuple of URLs, got the string {self.urls!r}")
        if not self.urls:
            raise ConfigError("TURN urls are empty; give at least one turn: or turns: URL")
        for url in self.urls:
            if not url.startswith(TURN_SCHEMES):
                raise ConfigError(f"TURN URL {url!r} is not allowed; it must start with turn: or turns:")
        if not MIN_TTL_S <= self.ttl_s <= MAX_TTL_S:
            raise ConfigError(f"TURN ttl_s {self.ttl_s} is not allowed; use {MIN_TTL_S}..{MAX_TTL_S} seconds")
        if not self.secret:
            raise ConfigError("TURN secret is empty; give the TURN server's static-auth-secret")


def turn_ice_server(config: TurnConfig, user: str, now: float) -> dict[str, object]:
    """The RTCIceServer dictionary (urls, username, credential) a browser's RTCPeerConnection takes."""
    username, credential = turn_credentials(config.secret, user, config.ttl_s, now)
    # The username is not secret (it is sent in the clear on the TURN allocation); the credential is.
    log.debug("issued TURN credential for %s valid until %s", user, username.partition(":")[0])
    return {"urls": list(config.urls), "username": username, "credential": credential}
