"""asyncio-side latest-value slot and bounded inbox (single event loop, no threads)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotClosed(Exception):
    """The slot was closed; the reason, if any, is the exception's __cause__."""


class LatestSlot(Generic[T]):
    """Holds at most one value. `put` overwrites (and counts the drop); `get` waits."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._has_value = False
        self._event = asyncio.Event()
        self._closed: BaseException | None = None
        self._is_closed = False
        self.drops = 0

    def put(self, value: T) -> bool:
        """True when an unread value was overwritten."""
        if self._is_closed:
            return False
        dropped = self._has_value
        if dropped:
            self.drops += 1
        self._value = value
        self._has_value = True
        self._event.set()
        return dropped

    async def get(self) -> T:
        while not self._has_value:
            if self._is_closed:
                raise SlotClosed() from self._closed
            self._event.clear()
            await self._event.wait()
        value = self._value
        self._value = None
        self._has_value = False
        return value  # type: ignore[return-value]

    def close(self, reason: BaseException | None = None) -> None:
        """Wake waiters; later gets raise SlotClosed once the last value is read."""
        self._is_closed = True
        self._closed = reason
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._is_closed


class Inbox(Generic[T]):
    """A small FIFO for rare messages (events); beyond `maxlen` the oldest is dropped
    so a reader that stopped reading cannot make memory grow."""

    def __init__(self, maxlen: int = 256) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self._event = asyncio.Event()
        self._is_closed = False

    def put(self, item: T) -> None:
        if not self._is_closed:
            self._items.append(item)
            self._event.set()

    async def get(self) -> T:
        while not self._items:
            if self._is_closed:
                raise SlotClosed()
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._is_closed = True
        self._event.set()
