"""Text-encoder scheduling: which sessions get fresh conditioning this step, and where it
runs.

All text-encoder work runs on its own CUDA stream, as one CUDA-graph replay per batch
bucket (its eager form launches hundreds of kernels from Python). Two kinds of refresh:

* blocking: the frame being made needs the result (first frame, a new prompt, mode
  'every'): the side stream waits on the text stream's event before the UNet inputs
  are assembled;
* background: a periodic refresh in mode 'refresh': the step goes on with the session's
  current conditioning and the new one is swapped in at the first step after it is
  ready (an event query, never a wait), so periodic refreshes never add latency.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.diffusion.graphs import GraphedCall
from pipeline.diffusion.text import PromptTokens, TextConditioner

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    cond: torch.Tensor
    """(L, hidden) in the model dtype, owned (not a graph's static buffer)."""
    mask: torch.Tensor
    """(L,) int64 valid positions."""
    ready: torch.cuda.Event | None = None
    """Recorded on the text stream after the tensors were written; None = ready now."""

    def is_ready(self) -> bool:
        return self.ready is None or self.ready.query()


class TextStage:
    def __init__(self, text: TextConditioner, device: torch.device, buckets: Sequence[int], use_graphs: bool) -> None:
        self.text = text
        self.device = device
        self.cuda = device.type == "cuda"
        self.buckets = tuple(sorted(buckets))
        self.use_graphs = use_graphs and self.cuda
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.overlap = True
        """False: run on the caller's stream (see DiffusionBackend.overlap)."""
        self.timings_ms: list[float] | None = None
        """When a list: each launch's text-stream time is appended (CUDA events)."""
        self._timing: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._graphs: dict[int, GraphedCall] = {}
        self.calls = 0
        """Encoder launches (tests count them)."""
        self.rows = 0
        """Rows encoded (padding excluded)."""

    def _stream(self) -> contextlib.AbstractContextManager[Any]:
        if self.stream is None or not self.overlap:
            return contextlib.nullcontext()
        return torch.cuda.stream(self.stream)

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def capture(self, frames: torch.Tensor, tokens: PromptTokens) -> None:
        """Record one CUDA graph per batch bucket (warm-up)."""
        if not self.use_graphs:
            return
        for b in self.buckets:
            if b in self._graphs:
                continue
            ids, _ = self.text.host_inputs([tokens] * b)
            example = frames[:1].expand(b, -1, -1, -1).contiguous()
            self.text.forward(example, ids)  # builds the cached vision index tensors first
            self._graphs[b] = GraphedCall(self.text.forward, [example, ids])

    @torch.inference_mode()
    def encode(
        self, frames: torch.Tensor | None, tokens: Sequence[PromptTokens], after: torch.cuda.Event | None
    ) -> list[Conditioning]:
        """Encode len(tokens) rows on the text stream (after `after`, an event of the stream
        that produced `frames`). frames: (n, 3, S, S) float [0, 255], or None (text only)."""
        n = len(tokens)
        self.calls += 1
        self.rows += n
        timed = self.timings_ms is not None and self.cuda
        with self._stream():
            if after is not None and self.stream is not None and self.overlap:
                self.stream.wait_event(after)
            if timed:
                t0 = torch.cuda.Event(enable_timing=True)
                t0.record()
            ids, mask = self.text.host_inputs(list(tokens))
            graph = self._graphs.get(self._bucket(n)) if frames is not None else None
            if graph is not None:
                b = self._bucket(n)
                if b > n:  # pad rows by repeating the last one (results dropped)
                    frames = torch.cat([frames, frames[-1:].expand(b - n, -1, -1, -1)])
                    ids = torch.cat([ids, ids[-1:].expand(b - n, -1)])
                hidden = graph(frames, ids)[:n].clone()  # own copy: the graph reuses its buffer
            else:
                hidden = self.text.forward(frames, ids)
            ready = None
            if self.stream is not None and self.overlap:
                ready = torch.cuda.Event()
                ready.record(self.stream)
            if timed:
                t1 = torch.cuda.Event(enable_timing=True)
                t1.record()
                self._timing.append((t0, t1))
        return [Conditioning(hidden[i], mask[i], ready) for i in range(n)]

    def drain_timings(self) -> None:
        """Move finished launch timings into timings_ms (call after a synchronisation)."""
        if self.timings_ms is None:
            return
        for t0, t1 in self._timing:
            self.timings_ms.append(t0.elapsed_time(t1))
        self._timing.clear()

    def wait(self, items: Sequence[Conditioning], stream: torch.cuda.Stream | None) -> None:
        """Make `stream` wait for the given results and keep their memory valid there."""
        if stream is None:
            return
        for event in {id(c.ready): c.ready for c in items if c.ready is not None}.values():
            stream.wait_event(event)
        for c in items:
            c.cond.record_stream(stream)
            c.mask.record_stream(stream)
