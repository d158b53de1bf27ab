"""Trickle ICE for WHIP/WHEP resources (RFC 9725 section 4.3, RFC 8840 fragments).

A client may POST its offer before it has gathered candidates and send them afterwards as
`application/trickle-ice-sdpfrag` PATCHes; aioice accepts remote candidates while it
checks, until end-of-candidates. ICE restarts are not supported (aiortc cannot change the
remote ICE credentials of a running connection): a fragment with new credentials is
refused with IceRestartUnsupported, which RFC 9725 answers with 422.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from aioice.mdns import is_mdns_hostname
from aiortc import RTCIceCandidate, RTCIceTransport, RTCPeerConnection
from aiortc import sdp as aiortc_sdp

MAX_CANDIDATES_PER_FRAGMENT = 32
MAX_REMOTE_CANDIDATES = 64
"""Per ICE transport: every candidate costs connectivity checks (packets this server sends)."""
MAX_FRAGMENT_LINES = 200


class BadFragment(ValueError):
    """The fragment is malformed or cannot apply to this session; the message says why."""


class IceRestartUnsupported(Exception):
    """The fragment carries new ICE credentials: an ICE restart, which this server cannot do."""


class StaleIceSession(Exception):
    """If-Match names another ICE session than the resource's current one."""


@dataclass
class Section:
    mid: str | None
    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    end: bool = False


@dataclass
class Fragment:
    ufrag: str | None = None
    pwd: str | None = None
    sections: list[Section] = field(default_factory=list)


def parse_fragment(text: str) -> Fragment:
    """RFC 8840 SDP fragment: session-level a=ice-ufrag/a=ice-pwd, then m= sections with
    a=mid, a=candidate and a=end-of-candidates lines. Unknown attributes are ignored."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_FRAGMENT_LINES:
        raise BadFragment(f"the fragment has {len(lines)} lines; at most {MAX_FRAGMENT_LINES}")
    fragment = Fragment()
    section: Section | None = None
    count = 0
    for line in lines:
        if line.startswith("m="):
            section = Section(mid=None)
            fragment.sections.append(section)
            continue
        if not line.startswith("a="):
            continue  # other line types carry nothing for ICE
        name, _, value = line[2:].partition(":")
        if name in ("ice-ufrag", "ice-pwd"):
            owner: Section | Fragment = section if section is not None else fragment
            setattr(owner, "ufrag" if name == "ice-ufrag" else "pwd", value.strip())
        elif section is None:
            continue
        elif name == "mid":
            section.mid = value.strip()
        elif name == "candidate":
            count += 1
            if count > MAX_CANDIDATES_PER_FRAGMENT:
                raise BadFragment(f"the fragment has more than {MAX_CANDIDATES_PER_FRAGMENT} candidates")
            section.candidates.append(_candidate(value))
        elif name == "end-of-candidates":
            section.end = True
    for index, sec in enumerate(fragment.sections):
        if not sec.mid:
            raise BadFragment(f"m= section {index} of the fragment has no a=mid")
    return fragment


def _candidate(value: str) -> RTCIceCandidate:
    try:
        candidate = aiortc_sdp.candidate_from_sdp(value)
    except (AssertionError, ValueError, IndexError):
        raise BadFragment(f"malformed candidate {value[:120]!r}") from None
    if candidate.protocol.lower() not in ("udp", "tcp") or candidate.type not in ("host", "srflx", "prflx", "relay"):
        raise BadFragment(f"candidate {value[:120]!r}: unknown protocol or type")
    if not 0 <= candidate.port <= 65535 or candidate.component < 1:
        raise BadFragment(f"candidate {value[:120]!r}: port or component out of range")
    try:
        ipaddress.ip_address(candidate.ip)
    except ValueError:
        # Only browsers' mDNS names: any other host name would make this server resolve it.
        if not is_mdns_hostname(candidate.ip):
            reason = "is neither an IP address nor an mDNS name"
            raise BadFragment(f"candidate address {candidate.ip[:80]!r} {reason}") from None
    return candidate


def ice_etag(pc: RTCPeerConnection) -> str:
    """A strong entity tag naming the resource's ICE session: our ICE username fragment
    (already public in the answer), which changes only with a new ICE session."""
    transport = _transports(pc)
    ufrag = next(iter(transport.values())).iceGatherer.getLocalParameters().usernameFragment if transport else ""
    return f'"{ufrag}"'


def _transports(pc: RTCPeerConnection) -> dict[str, RTCIceTransport]:
    """mid -> the ICE transport that carries it (a bundled section maps to the bundle's)."""
    found = {
        t.mid: t.receiver.transport.transport
        for t in pc.getTransceivers()
        if t.mid is not None and t.receiver.transport is not None
    }
    if pc.sctp is not None and pc.sctp.mid is not None and pc.sctp.transport is not None:
        found[pc.sctp.mid] = pc.sctp.transport.transport
    return found


async def apply_fragment(pc: RTCPeerConnection, fragment: Fragment) -> int:
    """Adds the fragment's candidates (and end-of-candidates) to the connection; returns how
    many candidates were added. Raises BadFragment, IceRestartUnsupported."""
    remote = pc.remoteDescription
    if remote is None:
        raise BadFragment("the session has no remote description yet")
    media = aiortc_sdp.SessionDescription.parse(remote.sdp).media
    credentials = {m.rtp.muxId: (m.ice.usernameFragment, m.ice.password) for m in media if m.ice is not None}
    transports = _transports(pc)
    plan: list[tuple[RTCIceTransport, Section]] = []
    for section in fragment.sections:
        assert section.mid is not None  # parse_fragment checked
        if section.mid not in transports or section.mid not in credentials:
            raise BadFragment(f"the session has no media section with a=mid:{section.mid[:40]}")
        ufrag, pwd = section.ufrag or fragment.ufrag, section.pwd or fragment.pwd
        if (ufrag is not None and ufrag != credentials[section.mid][0]) or (
            pwd is not None and pwd != credentials[section.mid][1]
        ):
            raise IceRestartUnsupported("ICE restarts are not supported; end this session and start a new one")
        transport = transports[section.mid]
        if len(transport.getRemoteCandidates()) + len(section.candidates) > MAX_REMOTE_CANDIDATES:
            raise BadFragment(f"a session takes at most {MAX_REMOTE_CANDIDATES} remote candidates")
        plan.append((transport, section))
    added = 0
    for transport, section in plan:  # all checked first: a refused fragment changes nothing
        for candidate in section.candidates:
            if candidate.component != 1:
                continue  # rtcp-mux: only component 1 exists
            candidate.sdpMid = section.mid
            await transport.addRemoteCandidate(candidate)
            added += 1
        if section.end:
            await transport.addRemoteCandidate(None)
    return added
