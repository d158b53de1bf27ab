"""The one place that knows two threads exist: the asyncio loop and the engine thread.

The loop side puts frames into per-session latest-frame slots (overwrite, count the
drop) and commands into a deque where a newer prompt or adapter strength of a session
replaces a queued one (latest wins, so a flood of them cannot grow it); the engine thread
waits for either, drains the commands, asks the core what to do (launch a step with
some of the waiting frames, collect the step in flight, or wait) and hands results back
with `loop.call_soon_threadsafe`. Nothing queues up without bound: a slow engine means
dropped input frames, never growing latency.

The loop side can see how long the current step has been running (`busy_for`, for the
watchdog) and can abandon a bridge whose thread is stuck: it then posts nothing more and
exits whenever its step returns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from pipeline.core import EngineCore, EngineFatalError, StepResult
from pipeline.messages import Command, FrameIn, Reseed, SetAdapterStrength, SetPrompt
from pipeline.scheduler import ArrivalTracker, Launch, Wait
from pipeline.stats import EngineStats

log = logging.getLogger(__name__)

_CoalesceKey = tuple[str, str]


class BridgeListener(Protocol):
    """Called on the event loop with the bridge that reports (stale ones can be ignored)."""

    def engine_progress(self, bridge: EngineBridge, message: str) -> None: ...

    def engine_ready(self, bridge: EngineBridge) -> None: ...

    def engine_result(self, bridge: EngineBridge, result: StepResult) -> None: ...

    def engine_failed(self, bridge: EngineBridge, message: str) -> None: ...


class EngineBridge:
    def __init__(
        self,
        build: Callable[[Callable[[str], None]], EngineCore],
        loop: asyncio.AbstractEventLoop,
        listener: BridgeListener,
        stats: EngineStats,
        name: str = "engine",
    ) -> None:
        """build(progress) runs on the engine thread and returns a core to warm up."""
        self._build = build
        self._loop = loop
        self._listener = listener
        self._stats = stats
        self._cond = threading.Condition()
        self._slots: dict[str, FrameIn] = {}
        self._arrivals = ArrivalTracker()
        self._commands: deque[Command | _CoalesceKey] = deque()
        self._latest: dict[_CoalesceKey, Command] = {}
        self._version = 0  # bumped by every frame and command: wakes a waiting engine thread
        self._stopping = False
        self._abandoned = False
        self._progress: str = ""
        self._progress_posted = False
        self.busy_since: float | None = None
        """time.monotonic() when the engine thread started its current step or command."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ---- loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put_frame(self, frame: FrameIn) -> bool:
        """Store the session's latest frame. True if it overwrote one the engine never
        took (a dropped frame)."""
        with self._cond:
            dropped = frame.session_id in self._slots
            self._slots[frame.session_id] = frame
            self._arrivals.record(frame.session_id, frame.t_in)
            self._version += 1
            self._cond.notify()
        return dropped

    def send(self, cmd: Command, *, discard_frames_of: str | None = None) -> None:
        with self._cond:
            if discard_frames_of is not None:
                self._slots.pop(discard_frames_of, None)
                self._arrivals.forget(discard_frames_of)
            if isinstance(cmd, SetPrompt | SetAdapterStrength | Reseed):
                key = (type(cmd).__name__, cmd.session_id)
                if key not in self._latest:
                    self._commands.append(key)
                elif isinstance(cmd, SetPrompt):
                    self._stats.prompts_coalesced.inc()
                self._latest[key] = cmd  # keeps the queued one's place
            else:
                self._commands.append(cmd)
            self._version += 1
            self._cond.notify()

    def busy_for(self, now: float) -> float:
        """Seconds the current step or command has been running (0 when idle)."""
        since = self.busy_since
        return 0.0 if since is None else now - since

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish its step and exit; True once it has."""
        self.abandon()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self) -> None:
        """Stop without waiting: nothing more is posted, and the thread exits (closing
        its core) as soon as whatever it is stuck in returns."""
        with self._cond:
            self._stopping = self._abandoned = True
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- engine thread ----------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        if self._abandoned:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed during shutdown: nobody to tell
            pass

    def _report_progress(self, message: str) -> None:
        # Latest wins: a chatty download callback posts one callback at a time, not thousands.
        with self._cond:
            self._progress = message
            if self._progress_posted:
                return
            self._progress_posted = True
        self._post(self._flush_progress)

    def _flush_progress(self) -> None:
        with self._cond:
            message, self._progress_posted = self._progress, False
        self._listener.engine_progress(self, message)

    def _run(self) -> None:
        core: EngineCore | None = None
        try:
            core = self._build(self._report_progress)
            core.warmup(self._report_progress)
            self._post(self._listener.engine_ready, self)
            self._loop_steps(core)
        except Exception as exc:
            if not self._abandoned:
                log.exception("engine failed")
            message = str(exc) if isinstance(exc, EngineFatalError) else f"{type(exc).__name__}: {exc}"
            self._post(self._listener.engine_failed, self, message)
        finally:
            self.busy_since = None
            if core is not None:
                try:
                    core.close()
                except Exception:
                    log.exception("engine close failed")

    def _loop_steps(self, core: EngineCore) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                commands = [self._latest.pop(c) if isinstance(c, tuple) else c for c in self._commands]
                self._commands.clear()
                waiting = list(self._slots.values())
                arrivals = self._arrivals.snapshot()
                version = self._version
            self.busy_since = time.monotonic()
            result = StepResult(events=[e for cmd in commands for e in core.execute(cmd)])
            decision = core.plan(waiting, arrivals)
            if isinstance(decision, Launch):
                with self._cond:
                    frames = [self._slots.pop(sid) for sid in decision.session_ids if sid in self._slots]
                result.extend(core.launch(frames))
            elif not isinstance(decision, Wait):
                result.extend(core.collect())
            self.busy_since = None
            if result.outputs or result.events:
                self._post(self._listener.engine_result, self, result)
            # Drop this thread's references before it sleeps: a session that has closed must
            # not stay alive (its frames and images) in a waiting engine thread's locals.
            waiting = frames = []
            result = StepResult()
            if isinstance(decision, Wait):
                with self._cond:
                    timeout = None if decision.until is None else decision.until - time.monotonic()
                    while self._version == version and not self._stopping and (timeout is None or timeout > 0):
                        self._cond.wait(timeout)
                        if decision.until is not None:
                            timeout = decision.until - time.monotonic()
