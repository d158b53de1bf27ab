"""The session registry: creates sessions from SDP offers, enforces max_sessions and
reaps sessions when their connection fails, closes or goes idle."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from pipeline.client import EngineClient, EngineUnavailable
from signaling.ice import IceServer
from signaling.offer_check import check_offer
from signaling.protocol import ProtocolError, check_prompt
from signaling.session import Session, SessionKind, SessionSettings, SignalingStats
from signaling.trickle import StaleIceSession, apply_fragment, ice_etag, parse_fragment
from signaling.viewers import BadSdp, Viewer, WatchLink, WatchNotFound

log = logging.getLogger(__name__)


class SessionLimitReached(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the server is full: {limit} of {limit} sessions are in use; try again later")
        self.limit = limit


class Draining(Exception):
    """The server is draining (about to stop): new sessions go to another server."""

    def __init__(self) -> None:
        super().__init__("this server is draining before it stops; connect again to reach another one")


# One name for "this SDP offer cannot be used" across the registry and viewers.
BadOffer = BadSdp

ENDED_TTL_S = 60.0
"""How long an ended WHIP session or viewer is remembered, so the client's own DELETE
(often sent after the server saw the connection close) still succeeds."""
MAX_ENDED = 1024


class SessionRegistry:
    def __init__(
        self,
        engine: EngineClient,
        *,
        max_sessions: int,
        settings: SessionSettings,
        ice_servers: tuple[IceServer, ...] = (),
        stats: SignalingStats | None = None,
        max_viewers: int = 10,
        watch_ttl_s: float = 12 * 3600,
        id_prefix: str = "",
    ) -> None:
        """id_prefix: put in front of every session id and watch token (a pod's name and a
        dot), so any server of a fleet can tell which one owns a link."""
        self.engine = engine
        self.max_sessions = max_sessions
        self.settings = settings
        self.ice_servers = ice_servers
        self.stats = stats or SignalingStats()
        self.max_viewers = max_viewers
        self.watch_ttl_s = watch_ttl_s
        self._sessions: dict[str, Session] = {}
        self._watch: dict[str, WatchLink] = {}
        self._pending = 0  # offers being negotiated: they hold a place too
        self._closed = False
        self.id_prefix = id_prefix
        self.draining = False
        """Set by a drain: offers are refused with Draining, live sessions carry on."""
        self._ended: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def closable(self, session_id: str, secret: str) -> Session | None:
        """The session if `secret` is its close secret (what the page sends when it goes away)."""
        session = self._sessions.get(session_id)
        if session is None or not hmac.compare_digest(session.close_secret.encode(), secret.encode(errors="replace")):
            return None
        return session

    @property
    def free_slots(self) -> int:
        """Sessions this server would still accept now (0 while draining)."""
        return 0 if self.draining else max(0, self.max_sessions - len(self._sessions) - self._pending)

    def sessions(self) -> list[Session]:
        """The live sessions now (a copy: closing one while iterating is fine)."""
        return list(self._sessions.values())

    def viewer_count(self) -> int:
        return sum(len(s.viewers) for s in self._sessions.values())

    async def create(
        self, sdp: str, sdp_type: str, prompt: str, kind: SessionKind = "browser"
    ) -> tuple[Session, RTCSessionDescription]:
        """Negotiate a new session: a browser (stylized video back, control channel) or a
        WHIP publisher (ingest only; watched through its watch link). Raises BadOffer,
        SessionLimitReached or EngineUnavailable; on any failure nothing is left behind."""
        if self._closed:
            raise EngineUnavailable("the server is shutting down")
        if self.draining:
            self.stats.sessions_rejected.inc()
            raise Draining()
        if not self.engine.healthy:  # say so before parsing anything: the offer cannot be served
            raise EngineUnavailable(self.engine.failure or f"engine is {self.engine.state}")
        if sdp_type != "offer":
            raise BadOffer(f"type must be 'offer', got {sdp_type[:40]!r}")
        check_offer(sdp)
        try:
            prompt = check_prompt(prompt, self.engine.info.max_prompt_chars)
        except ProtocolError as exc:
            raise BadOffer(exc.message) from None
        if len(self._sessions) + self._pending >= self.max_sessions:
            self.stats.sessions_rejected.inc()
            raise SessionLimitReached(self.max_sessions)

        session_id = self.id_prefix + secrets.token_urlsafe(9)
        engine_session = self.engine.open_session(session_id, prompt)
        self._pending += 1
        pc = RTCPeerConnection(self.rtc_configuration())
        session = Session(
            session_id,
            pc,
            engine_session,
            self.engine.info,
            self.settings,
            self.stats,
            self._forget,
            kind=kind,
            watch_directory=self,
        )
        pc.on("track", session.on_track)
        pc.on("datachannel", session.on_datachannel)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise BadOffer(f"the offer could not be parsed: {exc}") from exc
            if not session.has_video:
                raise BadOffer("the offer has no video track to stylize")
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # an offer aiortc parsed but cannot answer
                raise BadOffer(f"the offer cannot be answered: {exc}") from exc
        except BaseException:
            self._pending -= 1
            await _quietly(session.aclose("negotiation failed"), session)
            raise
        self._pending -= 1
        self._sessions[session_id] = session
        self.stats.sessions_created.inc()
        session.start()
        session.log.info("created (%d/%d sessions)", len(self._sessions), self.max_sessions)
        return session, pc.localDescription

    def rtc_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in self.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    def _remember_ended(self, key: tuple[str, ...]) -> None:
        self._ended.pop(key, None)
        self._ended[key] = time.monotonic()
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)

    def recently_ended(self, *key: str) -> bool:
        """Whether ("whip", session_id) or ("whep", token, viewer_id) ended in the last minute."""
        ended = self._ended.get(key)
        return ended is not None and time.monotonic() - ended < ENDED_TTL_S

    async def _forget(self, session: Session) -> None:
        if session.kind == "whip":
            self._remember_ended(("whip", session.id))
        if self._sessions.pop(session.id, None) is not None:
            if session.watch is not None:  # its viewers were closed with it
                self._watch.pop(session.watch.token, None)
            session.log.info("removed (%d/%d sessions)", len(self._sessions), self.max_sessions)

    # ---- watch links (WatchDirectory) ----------------------------------------------------------

    def create_watch(self, session: Session, *, renew: bool = False) -> WatchLink:
        """The session's live link, so links already sent keep working; a new one when there
        is none, it expired, or `renew` asks for it (the old one ends, its viewers with it)."""
        if session.watch is not None:
            if not renew and not session.watch.expired():
                return session.watch
            self._watch.pop(session.watch.token, None)
            session.viewers.disconnect()
        link = WatchLink.new(session.id, self.watch_ttl_s, self.id_prefix)
        self._watch[link.token] = link
        session.watch = link
        session.log.info("watch link created")  # the token itself is a secret: never logged
        return link

    def revoke_watch(self, session: Session) -> None:
        if session.watch is not None:
            self._watch.pop(session.watch.token, None)
            session.watch = None
            session.log.info("watch link revoked")
            session.viewers.disconnect()

    def resolve_watch(self, token: str) -> Session:
        link = self._watch.get(token)
        session = self._sessions.get(link.session_id) if link is not None else None
        if link is None or session is None or link.expired():
            if link is not None:
                self._watch.pop(token, None)
            raise WatchNotFound("this watch link does not exist or has ended")
        return session

    async def add_viewer(self, token: str, offer_sdp: str) -> tuple[Session, Viewer, str]:
        session = self.resolve_watch(token)
        check_offer(offer_sdp)
        viewer, answer = await session.viewers.add(offer_sdp, self.rtc_configuration(), self.max_viewers)
        closed = viewer.on_closed

        async def remember_then_close(v: Viewer) -> None:  # however it ends: DELETE, drop, broadcaster gone
            self._remember_ended(("whep", token, v.id))
            await closed(v)

        viewer.on_closed = remember_then_close
        return session, viewer, answer

    def viewer(self, token: str, viewer_id: str) -> Viewer:
        viewer = self.resolve_watch(token).viewers.get(viewer_id)
        if viewer is None:
            raise WatchNotFound("no such viewer")
        return viewer

    async def remove_viewer(self, token: str, viewer_id: str) -> None:
        await self.viewer(token, viewer_id).aclose()

    # ---- trickle ICE (WHIP/WHEP PATCH) ---------------------------------------------------------

    @staticmethod
    def etag(pc: RTCPeerConnection) -> str:
        """The entity tag of a WHIP/WHEP resource's ICE session (ETag / If-Match)."""
        return ice_etag(pc)

    async def trickle(self, pc: RTCPeerConnection, fragment_text: str, if_match: str | None) -> int:
        """Apply a trickle-ICE fragment to a WHIP session's or a viewer's connection; returns
        the candidates added. Raises StaleIceSession, BadFragment, IceRestartUnsupported."""
        if if_match is not None and if_match.strip() != "*":
            if ice_etag(pc) not in (tag.strip() for tag in if_match.split(",")):
                raise StaleIceSession("If-Match does not name this resource's ICE session")
        return await apply_fragment(pc, parse_fragment(fragment_text))

    async def aclose(self) -> None:
        self._closed = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.aclose("server shutdown") for s in sessions), return_exceptions=True)
        log.info("closed %d sessions", len(sessions))


async def _quietly(closing: Awaitable[None], session: Session) -> None:
    """Clean up after a refused offer without masking why it was refused: aiortc can fail to
    close a connection it only half built."""
    try:
        await closing
    except Exception as exc:  # noqa: BLE001 - aiortc's own bug, not news: the offer was refused already
        session.log.debug("cleanup after a refused offer failed: %r", exc)
