"""Checks an SDP offer before aiortc acts on it.

aiortc trusts its input: an offer without `a=mid`, `a=setup`, a fingerprint or a direction
parses, then fails later, in createAnswer, in close() or in a background task nobody
awaits, leaving half-built transports behind. An offer with hundreds of m= sections makes
it bind sockets for every one. So every offer is parsed with aiortc's own parser first and
refused (BadSdp, with the reason) unless aiortc can negotiate it cleanly.
"""

from __future__ import annotations

from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS

from signaling.session import BadSdp

MAX_MEDIA_SECTIONS = 8
"""A browser sends 1-3 (video, audio, data channel); OBS 2."""
MAX_SDP_LINES = 2000
"""Chromium's full offer with every codec is ~200 lines."""
MEDIA_KINDS = ("audio", "video", "application")


def check_offer(text: str) -> aiortc_sdp.SessionDescription:
    """The parsed offer, or BadSdp saying what is wrong with it."""
    if not text.lstrip().startswith("v=0"):
        raise BadSdp("sdp is not a session description (it must start with 'v=0')")
    if text.count("\n") > MAX_SDP_LINES:
        raise BadSdp(f"the offer has more than {MAX_SDP_LINES} lines")
    if text.count("\nm=") > MAX_MEDIA_SECTIONS:
        raise BadSdp(f"the offer has more than {MAX_MEDIA_SECTIONS} media sections")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # the parser raises whatever a bad line provokes
        raise BadSdp(f"the offer could not be parsed: {_reason(exc)}") from exc
    if not description.media:
        raise BadSdp("the offer has no media sections")
    mids: list[str] = []
    for index, media in enumerate(description.media):
        where = f"media section {index} ({media.kind})"
        if media.kind not in MEDIA_KINDS:
            raise BadSdp(f"{where}: kind must be one of {', '.join(MEDIA_KINDS)}")
        mid = media.rtp.muxId
        if not mid:
            raise BadSdp(f"{where} has no a=mid")
        if mid in mids:
            raise BadSdp(f"{where} repeats a=mid:{mid}")
        mids.append(mid)
        _check_transport(media, where)
        if media.kind == "application":
            if media.profile not in ("UDP/DTLS/SCTP", "DTLS/SCTP"):
                raise BadSdp(f"{where}: a data channel needs UDP/DTLS/SCTP, got {media.profile}")
            if media.profile == "UDP/DTLS/SCTP" and media.sctp_port is None:
                raise BadSdp(f"{where} has no a=sctp-port")
            if media.profile == "DTLS/SCTP" and not (media.fmt and str(media.fmt[0]).isdigit()):
                raise BadSdp(f"{where} names no SCTP port")
        elif media.direction is None:
            raise BadSdp(f"{where} has no direction (a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
    if sum(m.kind == "application" for m in description.media) > 1:
        raise BadSdp("the offer has more than one data channel section")
    for group in description.group:
        unknown = [item for item in group.items if str(item) not in mids]
        if group.semantic == "BUNDLE" and unknown:
            raise BadSdp(f"a=group:BUNDLE names {', '.join(map(str, unknown))}, which no media section has as a=mid")
    return description


def _check_transport(media: aiortc_sdp.MediaDescription, where: str) -> None:
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise BadSdp(f"{where} has no a=ice-ufrag / a=ice-pwd")
    if media.dtls is None:
        raise BadSdp(f"{where} has no a=setup")
    if not any(f.algorithm.lower() in X509_DIGEST_ALGORITHMS for f in media.dtls.fingerprints):
        raise BadSdp(f"{where} has no a=fingerprint with {', '.join(X509_DIGEST_ALGORITHMS)}")
    if media.kind != "application" and not media.rtcp_mux:
        raise BadSdp(f"{where} has no a=rtcp-mux (WebRTC requires it)")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
