"""The restart supervisor (event-loop side): builds the engine behind one bridge, watches
its steps, and rebuilds it when it fails or hangs.

A fatal error, or a step still running after `step_timeout_s` (the stuck thread cannot
be killed: it is abandoned, and exits if its step ever returns), puts health in
`restarting`; the client tells its sessions and the supervisor builds a new engine on a
new thread after a backoff, to which the client re-attaches every live session. Failures
in a row are counted (the count starts over once an engine has run for a minute); past
`restart_limit`, or when the very first build fails (nothing has worked yet: most likely
the configuration), health is `unhealthy` for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.bridge import EngineBridge
from pipeline.core import EngineCore, StepResult
from pipeline.health import EngineHealth
from pipeline.messages import EngineInfo
from pipeline.runtime import RuntimeConfig
from pipeline.stats import EngineStats

if TYPE_CHECKING:
    from pipeline.client import Bridge, EngineSpec

log = logging.getLogger(__name__)

STABLE_S = 60.0
"""An engine that ran this long before failing starts the failure count over."""
MAX_BACKOFF_S = 60.0


class SupervisedClient(Protocol):
    """What the supervisor tells the engine client (on the event loop)."""

    info: EngineInfo
    """What the engine is; a remote link replaces it with the engine process's own."""

    def attach(self, bridge: Bridge) -> None:
        """Send every live session's state to a new bridge."""

    def ready(self) -> None:
        """An engine is warm and stepping."""

    def deliver(self, result: StepResult) -> None: ...

    def restarting(self, reason: str) -> None:
        """The engine is being rebuilt; sessions stay."""

    def gave_up(self, reason: str) -> None:
        """No engine any more: sessions must end."""


class EngineSupervisor:
    def __init__(
        self,
        spec: EngineSpec,
        stats: EngineStats,
        runtime: RuntimeConfig,
        health: EngineHealth,
        client: SupervisedClient,
    ) -> None:
        self._spec = spec
        self._stats = stats
        self._runtime = runtime
        self._health = health
        self._client = client
        self.bridge: EngineBridge | None = None
        self._abandoned: list[EngineBridge] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._builds = 0
        self._failures_in_a_row = 0
        self._ready_at: float | None = None
        self._ever_ready = False
        self._closing = False

    def start(self) -> None:
        self._launch()
        self._spawn(self._watch(), "engine-watchdog")

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        current, self.bridge = self.bridge, None
        stuck = [b for b in self._abandoned if b.alive]
        # join() blocks: do it off the loop so shutdown never stalls other tasks.
        if current is not None and not await asyncio.to_thread(current.stop):
            log.warning("engine thread did not stop within its timeout")
        for bridge in stuck:
            if not await asyncio.to_thread(bridge.stop, 1.0):
                log.warning("an abandoned engine thread is still stuck at shutdown")

    # ---- building ---------------------------------------------------------------------

    def _launch(self) -> None:
        self._builds += 1
        bridge = EngineBridge(self._build, asyncio.get_running_loop(), self, self._stats, name=f"engine-{self._builds}")
        self.bridge = bridge
        self._client.attach(bridge)  # queued now, executed once the new core is warm
        bridge.start()

    def _build(self, progress: Callable[[str], None]) -> EngineCore:
        """On the engine thread."""
        core = self._spec.build(self._stats, progress)
        core.configure(self._runtime)
        return core

    # ---- BridgeListener ---------------------------------------------------------------

    def engine_progress(self, bridge: EngineBridge, message: str) -> None:
        if bridge is self.bridge:
            self._health.report_progress(message)

    def engine_ready(self, bridge: EngineBridge) -> None:
        if bridge is self.bridge:
            self._ready_at = time.monotonic()
            self._ever_ready = True
            self._health.ready()
            self._client.ready()
            log.info("engine ready (build %d)", self._builds)

    def engine_result(self, bridge: EngineBridge, result: StepResult) -> None:
        if bridge is self.bridge:
            self._client.deliver(result)

    def engine_failed(self, bridge: EngineBridge, message: str) -> None:
        self._failed(bridge, message)

    # ---- failures ---------------------------------------------------------------------

    def _failed(self, bridge: EngineBridge, reason: str) -> None:
        if bridge is not self.bridge or self._closing:
            return  # a stale report from an engine already replaced
        self.bridge = None
        bridge.abandon()
        self._abandoned = [b for b in self._abandoned if b.alive] + [bridge]
        if not self._ever_ready:
            self._give_up(f"the engine failed to start: {reason}")
            return
        if self._ready_at is not None and time.monotonic() - self._ready_at >= STABLE_S:
            self._failures_in_a_row = 0
        self._ready_at = None
        self._failures_in_a_row += 1
        limit = self._runtime.restart_limit
        if self._failures_in_a_row > limit:
            given_up = f"gave up after {limit} restart{'s' * (limit > 1)}"
            if not limit:
                given_up = "engine restarts are off (--engine-restarts 0)"
            self._give_up(f"{given_up}: {reason}")
            return
        delay = min(self._runtime.restart_backoff_s * 2 ** (self._failures_in_a_row - 1), MAX_BACKOFF_S)
        message = f"{reason}; rebuilding the engine (attempt {self._failures_in_a_row} of {limit})"
        log.error("engine failed: %s, in %.1f s", message, delay)
        self._health.restarting(message)
        self._client.restarting(message)
        self._spawn(self._rebuild(delay), "engine-rebuild")

    async def _rebuild(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._closing:
            self._launch()

    def _give_up(self, reason: str) -> None:
        log.error("engine unavailable: %s", reason)
        self._health.unhealthy(reason)
        self._client.gave_up(reason)

    async def _watch(self) -> None:
        """The watchdog: a step that runs past the deadline counts as a fatal error."""
        timeout = self._runtime.step_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            bridge = self.bridge
            if bridge is not None and bridge.busy_for(time.monotonic()) > timeout:
                self._failed(bridge, f"an engine step has not finished in {timeout:g} s (hung)")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
