"""CUDA streams, events and cross-stream lifetimes for one engine step.

Three streams: `main` (UNet + decode; the highest priority when priorities are on, so
its kernels win the SMs), `side` (upload, VAE encode, conditioning assembly) and `text`
(the text encoder). The rules every handoff follows:

* a consumer stream waits on an event recorded on the producer's stream AFTER the
  producing op was queued;
* a tensor read on a stream other than the one it was allocated on stays referenced
  (KeepAlive) until an event recorded after that read has fired: the caching allocator
  hands a freed block to the next allocation of its own stream at once, so dropping the
  last reference earlier lets that stream overwrite memory another stream still reads.
  (record_stream would also work, but frees "whenever", and is easy to forget.)
* host<->device copies use pinned memory only (a pageable copy blocks the engine thread);
* events the host waits on are blocking-sync events: the thread sleeps, it does not spin
  a core the media path needs.

On CPU every stream is None and every helper is a no-op, so the same code runs eagerly.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

MAIN_PRIORITY = -1
"""CUDA priorities: lower is more urgent; 0 is the default (and the least urgent)."""
SIDE_PRIORITY = 0
KEEPALIVE_LIMIT = 64
"""Entries held before the oldest is waited for (a bound: the GPU is far behind)."""


class StreamSet:
    def __init__(self, device: torch.device, *, priorities: bool) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.overlap = True
        """False: every stage runs on the main stream, in order (benchmarks measure the
        overlap this way); same results."""
        self.main: torch.cuda.Stream | None = None
        self.side: torch.cuda.Stream | None = None
        self.text: torch.cuda.Stream | None = None
        if self.cuda:
            high = MAIN_PRIORITY if priorities else SIDE_PRIORITY
            self.main = torch.cuda.Stream(device, priority=high)
            self.side = torch.cuda.Stream(device, priority=SIDE_PRIORITY)
            self.text = torch.cuda.Stream(device, priority=SIDE_PRIORITY)

    def priorities(self) -> dict[str, int] | None:
        if not self.cuda:
            return None
        return {name: getattr(self, name).priority for name in ("main", "side", "text")}

    def _use(self, stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)

    def on_main(self) -> contextlib.AbstractContextManager[Any]:
        return self._use(self.main)

    def on_side(self) -> contextlib.AbstractContextManager[Any]:
        return self._use(self.side if self.overlap else self.main)

    def on_text(self) -> contextlib.AbstractContextManager[Any]:
        return self._use(self.text if self.overlap else self.main)

    def record(self, stream: torch.cuda.Stream | None = None, *, blocking: bool = False) -> torch.cuda.Event | None:
        """An event recorded now on `stream` (default: the current stream); None on CPU.
        blocking=True for events the host will wait on (synchronize sleeps, no spin)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event(blocking=blocking)
        event.record(stream)
        return event

    def wait(self, stream: torch.cuda.Stream | None, event: torch.cuda.Event | None) -> None:
        """`stream` waits (on the GPU) for `event`."""
        if stream is not None and event is not None:
            stream.wait_event(event)

    def text_stream(self) -> torch.cuda.Stream | None:
        return self.text if self.overlap else self.main

    def side_stream(self) -> torch.cuda.Stream | None:
        return self.side if self.overlap else self.main


class KeepAlive:
    """References held until an event has fired (see the module docstring)."""

    def __init__(self) -> None:
        self._held: deque[tuple[torch.cuda.Event, tuple[Any, ...]]] = deque()

    def hold(self, event: torch.cuda.Event | None, *objects: Any) -> None:
        if event is None:
            return  # CPU: work is done when the call returns
        self._held.append((event, objects))
        while len(self._held) > KEEPALIVE_LIMIT:
            oldest, _ = self._held.popleft()
            oldest.synchronize()

    def release_finished(self) -> None:
        """Drop every entry whose event has fired (no waiting)."""
        while self._held and self._held[0][0].query():
            self._held.popleft()

    def clear(self) -> None:
        """After a device-wide synchronize (error recovery): nothing is in use any more."""
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device on the current stream, through pinned memory (the caching
    host allocator: pinning is cheap after the first steps, and the block is reused only
    once the copy has finished)."""
    if device.type != "cuda":
        return host.to(device)
    if not host.is_pinned():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def gather_rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """x[rows] without a host->device index copy: a view for a leading range, else one
    cat of row views (the rows are known on the host)."""
    rows = list(rows)
    if rows == list(range(len(rows))):
        return x[: len(rows)]
    return torch.cat([x[i : i + 1] for i in rows])
