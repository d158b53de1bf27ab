"""The one place that knows two threads exist: the asyncio loop and the engine thread.

The loop side puts frames into per-session latest-frame slots (overwrite, count the
drop) and commands into a deque; the engine thread waits for either, drains commands,
takes at most one fresh frame per session (oldest first, up to max_batch), steps the
core and hands the result back with `loop.call_soon_threadsafe`. Nothing queues up
without bound: a slow engine means dropped input frames, never growing latency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

from pipeline.core import EngineCore, StepResult
from pipeline.messages import Command, EngineFailed, FrameIn

log = logging.getLogger(__name__)

EngineState = Literal["starting", "warming_up", "ready", "failed", "closed"]


class EngineBridge:
    def __init__(
        self,
        core_factory: Callable[[], EngineCore],
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[StepResult], None],
        on_state: Callable[[EngineState, str], None],
    ) -> None:
        self._core_factory = core_factory
        self._loop = loop
        self._deliver = deliver
        self._on_state = on_state
        self._cond = threading.Condition()
        self._slots: dict[str, FrameIn] = {}
        self._commands: deque[Command] = deque()
        self._stopping = False
        self._max_batch = 1
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    # ---- loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put_frame(self, frame: FrameIn) -> bool:
        """Store the session's latest frame. True if it overwrote one the engine never
        took (a dropped frame)."""
        with self._cond:
            dropped = frame.session_id in self._slots
            self._slots[frame.session_id] = frame
            self._cond.notify()
        return dropped

    def send(self, cmd: Command, *, discard_frames_of: str | None = None) -> None:
        with self._cond:
            if discard_frames_of is not None:
                self._slots.pop(discard_frames_of, None)
            self._commands.append(cmd)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish its step and exit; True once it has."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- engine thread ----------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed during shutdown: nobody to tell
            pass

    def _run(self) -> None:
        core: EngineCore | None = None
        try:
            core = self._core_factory()
            self._max_batch = core.max_batch
            self._post(self._on_state, "warming_up", "")
            core.warmup(lambda msg: log.info("warm-up: %s", msg))
            self._post(self._on_state, "ready", "")
            self._loop_steps(core)
        except Exception as exc:
            log.exception("engine failed")
            message = f"{type(exc).__name__}: {exc}"
            self._post(self._deliver, StepResult(events=[EngineFailed(message)]))
            self._post(self._on_state, "failed", message)
        finally:
            if core is not None:
                try:
                    core.close()
                except Exception:
                    log.exception("engine close failed")

    def _take(self, block: bool) -> tuple[list[Command], list[FrameIn]] | None:
        """Commands and fresh frames; waits for some only when `block` (nothing in flight)."""
        with self._cond:
            while block and not (self._stopping or self._commands or self._slots):
                self._cond.wait()
            if self._stopping:
                return None
            commands = list(self._commands)
            self._commands.clear()
            frames = sorted(self._slots.values(), key=lambda f: f.t_in)[: self._max_batch]
            for f in frames:
                del self._slots[f.session_id]
            return commands, frames

    def _loop_steps(self, core: EngineCore) -> None:
        # A pipelined core keeps one batch in flight while the next is launched; when no new
        # frame is waiting, the batch in flight is collected at once (no added latency).
        while (taken := self._take(block=not core.has_inflight)) is not None:
            commands, frames = taken
            events = [e for cmd in commands for e in core.execute(cmd)]
            result = core.step(frames) if frames else core.flush()
            result.events[:0] = events
            if result.outputs or result.events:
                self._post(self._deliver, result)
