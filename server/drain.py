"""Draining a server before it stops (a pod's preStop hook, POST /admin/drain)."""

from __future__ import annotations

import asyncio
import logging
import time

from signaling.protocol import ErrorMsg
from signaling.registry import SessionRegistry

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.5
DRAIN_NOTICE_S = 1.0
"""Between the server_draining message and closing the connection, so the message arrives."""


class Drainer:
    """Drain before a stop: the registry refuses offers at once (readiness fails with it),
    live sessions run on for grace_s, then the rest are told `server_draining` and closed, so
    their pages reconnect through the Service to another pod."""

    def __init__(self, registry: SessionRegistry, grace_s: float) -> None:
        self.registry = registry
        self.grace_s = grace_s
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Idempotent: a second drain request joins the first."""
        if self._task is None:
            self.registry.draining = True
            self._task = asyncio.create_task(self._run(), name="drain")

    async def wait(self, timeout_s: float) -> bool:
        """True once the drain has finished (every session gone)."""
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        registry = self.registry
        log.info("draining: refusing new sessions; %d live ones get %g s", len(registry), self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while len(registry) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        moved = registry.sessions()
        notice = "this server is stopping; connect again to continue on another one"
        for session in moved:
            session.log.info("draining: told to move")
            session.control.send(ErrorMsg(code="server_draining", message=notice))
        if moved:
            await asyncio.sleep(DRAIN_NOTICE_S)
        await asyncio.gather(*(s.aclose("server draining") for s in moved), return_exceptions=True)
        log.info("drained (%d sessions moved after the grace period)", len(moved))

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
