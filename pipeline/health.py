"""The engine's health: a small state machine with a reason, shown by /healthz and /metrics.

    warming_up --ready--> ok <--(a minute without faults)-- degraded
        |                  |  \\--transient fault--> degraded
        |                  fatal error or hung step
        |                  v
        |              restarting --rebuilt--> degraded --> ok
        |                  |
        +--------------> unhealthy (gave up; terminal, as is shutting down)

Only `unhealthy` means the engine takes no more work (503 for new offers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

HealthStatus = Literal["ok", "warming_up", "degraded", "restarting", "unhealthy"]
HEALTH_STATUSES: tuple[HealthStatus, ...] = ("ok", "warming_up", "degraded", "restarting", "unhealthy")
DEGRADED_S = 60.0
"""How long a recovered fault keeps the engine `degraded`."""
_Phase = Literal["warming_up", "running", "restarting", "unhealthy", "closed"]


class EngineHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic, degraded_s: float = DEGRADED_S) -> None:
        self._clock = clock
        self._degraded_s = degraded_s
        self._phase: _Phase = "warming_up"
        self._reason = "the engine is starting"
        self._degraded_until = -math.inf
        self._degraded_reason = ""
        self.progress = ""
        """Latest warm-up or download detail while the engine is being built."""
        self.restarts = 0
        self.transient_faults = 0

    @property
    def status(self) -> HealthStatus:
        if self._phase == "running":
            return "degraded" if self._clock() < self._degraded_until else "ok"
        if self._phase == "closed":
            return "unhealthy"
        return self._phase

    @property
    def reason(self) -> str:
        if self._phase == "running":
            return self._degraded_reason if self.status == "degraded" else ""
        return self._reason

    @property
    def final(self) -> bool:
        """Given up or shut down: no transition leaves this."""
        return self._phase in ("unhealthy", "closed")

    @property
    def closed(self) -> bool:
        return self._phase == "closed"

    @property
    def running(self) -> bool:
        return self._phase == "running"

    def report_progress(self, message: str) -> None:
        if self._phase in ("warming_up", "restarting") and message != self.progress:
            self.progress = message
            log.info("engine warm-up: %s", message)

    def ready(self) -> None:
        if self.final:
            return
        if self._phase == "restarting":
            self._degrade(f"running again after a restart ({self._reason})")
        self._phase, self._reason, self.progress = "running", "", ""

    def transient(self, message: str) -> None:
        if self.final:
            return
        self.transient_faults += 1
        self._degrade(f"recovered from a transient engine error: {message}")

    def restarting(self, reason: str) -> None:
        if self.final:
            return
        self.restarts += 1
        self._phase, self._reason, self.progress = "restarting", reason, ""

    def unhealthy(self, reason: str) -> None:
        if not self.final:
            self._phase, self._reason = "unhealthy", reason

    def close(self) -> None:
        if self._phase != "unhealthy":
            self._phase, self._reason = "closed", "the engine was shut down"

    def _degrade(self, reason: str) -> None:
        self._degraded_until = self._clock() + self._degraded_s
        self._degraded_reason = reason

    def snapshot(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reason": self.reason or None,
            "progress": self.progress or None,
            "restarts": self.restarts,
            "transient_faults": self.transient_faults,
        }
