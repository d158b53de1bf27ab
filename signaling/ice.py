"""ICE server description (plain data, so configuration code need not import aiortc)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, object]:
        """The RTCIceServer dictionary a browser's RTCPeerConnection takes."""
        data: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            data["username"] = self.username
        if self.credential is not None:
            data["credential"] = self.credential
        return data


NO_HOST_ADDRESS = (
    "this machine has no network address besides 127.0.0.1, and aiortc (aioice) gathers ICE host "
    "candidates from every address except that one, so no WebRTC peer can connect to or from it"
)
"""Why a WebRTC session cannot connect on such a host (a bare container or VM)."""

NO_HOST_ADDRESS_REMEDY = (
    "give it one (as root, for a loopback-only test: `ip addr add 127.0.0.2/32 dev lo`), "
    "or give this server a TURN relay of its own (--ice-server turn:...; --turn-url only serves the pages); "
    "for peers on this same machine only, --ice-loopback offers 127.0.0.1"
)


def host_addresses() -> list[str]:
    """The addresses aioice will offer as host candidates (its own rule, so the answer is
    the one a peer connection gets)."""
    from aioice.ice import get_host_addresses

    return list(get_host_addresses(use_ipv4=True, use_ipv6=True))


def unreachable_reason(ice_servers: tuple[IceServer, ...] = ()) -> str | None:
    """Why no peer can connect (no host candidate and no relay to fall back to), else None."""
    if host_addresses():
        return None
    relayed = any(url.startswith(("turn:", "turns:")) for s in ice_servers for url in s.urls)
    return None if relayed else f"{NO_HOST_ADDRESS}; {NO_HOST_ADDRESS_REMEDY}"


def offer_loopback() -> Callable[[], None]:
    """Make aioice offer 127.0.0.1 as a host candidate as well (process-wide: aioice reads
    its host addresses through one module function). For tests and benchmarks whose peers
    all run on this machine, on a host whose only address is loopback (a bare container
    without the right to add one); a remote peer cannot use the candidate. Returns the undo."""
    import aioice.ice as ice

    original = ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = list(original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        return found if not use_ipv4 or "127.0.0.1" in found else [*found, "127.0.0.1"]

    ice.get_host_addresses = with_loopback

    def undo() -> None:
        ice.get_host_addresses = original

    return undo
