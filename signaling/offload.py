"""Per-frame work off the event loop: one thread behind a latest-frame slot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class LatestWorker(Generic[In, Out]):
    """Runs `work(item)` on its own thread for the newest item put, and `deliver(result)`
    back on the event loop that created it.

    `put` never blocks and never queues: an item the thread has not started yet is
    replaced (counted in `drops`), so a slow moment costs frames, not latency. If `work`
    raises, the thread stops and the next `put` raises that error in the owner's task.
    Create it in the coroutine that owns it and `await aclose()` in that coroutine's
    `finally`: no result is delivered after aclose() starts.
    """

    def __init__(self, name: str, work: Callable[[In], Out], deliver: Callable[[Out], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._work = work
        self._deliver = deliver
        self._cond = threading.Condition()
        self._item: In | None = None
        self._has_item = False
        self._closed = False
        self._error: Exception | None = None
        self._stopped = asyncio.Event()
        self.drops = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: In) -> bool:
        """Hand the thread the newest item; True when an unstarted one was replaced."""
        if self._error is not None:
            raise self._error
        with self._cond:
            dropped = self._has_item
            self.drops += dropped
            self._item, self._has_item = item, True
            self._cond.notify()
        return dropped

    async def aclose(self) -> None:
        """Stop the thread (after the item it is working on) and wait until it has exited."""
        with self._cond:
            self._closed = True
            self._item, self._has_item = None, False
            self._cond.notify()
        await self._stopped.wait()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._has_item and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    item, self._item, self._has_item = self._item, None, False
                result = self._work(item)  # type: ignore[arg-type]
                self._loop.call_soon_threadsafe(self._deliver_open, result)
        except Exception as exc:  # noqa: BLE001 - handed to the owner's task by put()
            self._error = exc
        finally:
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _deliver_open(self, result: Out) -> None:
        if not self._closed:
            self._deliver(result)
