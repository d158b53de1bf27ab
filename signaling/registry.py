"""The session registry: creates sessions from SDP offers, enforces max_sessions and
reaps sessions when their connection fails, closes or goes idle."""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from pipeline.client import EngineClient, EngineUnavailable
from signaling.ice import IceServer
from signaling.session import Session, SessionSettings, SignalingStats

log = logging.getLogger(__name__)


class SessionLimitReached(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the server is full: {limit} of {limit} sessions are in use; try again later")
        self.limit = limit


class BadOffer(ValueError):
    """The offer cannot be used; the message says why, for the client."""


class SessionRegistry:
    def __init__(
        self,
        engine: EngineClient,
        *,
        max_sessions: int,
        settings: SessionSettings,
        ice_servers: tuple[IceServer, ...] = (),
        stats: SignalingStats | None = None,
    ) -> None:
        self.engine = engine
        self.max_sessions = max_sessions
        self.settings = settings
        self.ice_servers = ice_servers
        self.stats = stats or SignalingStats()
        self._sessions: dict[str, Session] = {}
        self._pending = 0  # offers being negotiated: they hold a place too
        self._closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def create(self, sdp: str, sdp_type: str, prompt: str) -> tuple[Session, RTCSessionDescription]:
        """Negotiate a new session. Raises BadOffer, SessionLimitReached or
        EngineUnavailable; on any failure nothing is left behind."""
        if self._closed:
            raise EngineUnavailable("the server is shutting down")
        if sdp_type != "offer":
            raise BadOffer(f"type must be 'offer', got {sdp_type!r}")
        if not sdp.lstrip().startswith("v=0"):
            raise BadOffer("sdp is not a session description (it must start with 'v=0')")
        if len(prompt) > self.engine.info.max_prompt_chars:
            raise BadOffer(
                f"prompt has {len(prompt)} characters; at most {self.engine.info.max_prompt_chars} are allowed"
            )
        if len(self._sessions) + self._pending >= self.max_sessions:
            self.stats.sessions_rejected.inc()
            raise SessionLimitReached(self.max_sessions)

        session_id = secrets.token_urlsafe(9)
        engine_session = self.engine.open_session(session_id, prompt)
        self._pending += 1
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._rtc_ice_servers()))
        session = Session(session_id, pc, engine_session, self.engine.info, self.settings, self.stats, self._forget)
        pc.on("track", session.on_track)
        pc.on("datachannel", session.on_datachannel)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                raise BadOffer(f"the offer could not be parsed: {exc}") from exc
            if not session.has_video:
                raise BadOffer("the offer has no video track to stylize")
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            self._pending -= 1
            await session.aclose("negotiation failed")
            raise
        self._pending -= 1
        self._sessions[session_id] = session
        self.stats.sessions_created.inc()
        session.start()
        session.log.info("created (%d/%d sessions)", len(self._sessions), self.max_sessions)
        return session, pc.localDescription

    def _rtc_ice_servers(self) -> list[RTCIceServer]:
        return [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in self.ice_servers]

    async def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None:
            session.log.info("removed (%d/%d sessions)", len(self._sessions), self.max_sessions)

    async def aclose(self) -> None:
        self._closed = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.aclose("server shutdown") for s in sessions), return_exceptions=True)
        log.info("closed %d sessions", len(sessions))
