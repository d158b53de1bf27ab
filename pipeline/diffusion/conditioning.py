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

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.diffusion.graphs import GraphedCall
from pipeline.diffusion.streams import StreamSet
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
    def __init__(self, text: TextConditioner, streams: StreamSet, buckets: Sequence[int], use_graphs: bool) -> None:
        self.text = text
        self.streams = streams
        self.buckets = tuple(sorted(buckets))
        self.use_graphs = use_graphs and streams.cuda
        self.timings_ms: list[float] | None = None
        """When a list: each launch's text-stream time is appended (CUDA events)."""
        self._timing: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._graphs: dict[tuple[int, int], GraphedCall] = {}
        self.calls = 0
        """Encoder launches (tests count them)."""
        self.rows = 0
        """Rows encoded (padding excluded)."""

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def capture(self, frames: torch.Tensor, tokens: PromptTokens) -> None:
        """Record one CUDA graph per (batch bucket, length bucket) (warm-up)."""
        if not self.use_graphs:
            return
        for b in self.buckets:
            for length in self.text.length_buckets:
                if (b, length) in self._graphs:
                    continue
                ids, _ = self.text.host_inputs([tokens] * b, length)
                example = frames[:1].expand(b, -1, -1, -1).contiguous()
                self.text.forward(example, ids)  # builds the cached vision index tensors first
                self._graphs[b, length] = GraphedCall(self.text.forward, [example, ids])

    @torch.inference_mode()
    def encode(
        self, frames: torch.Tensor | None, tokens: Sequence[PromptTokens], after: torch.cuda.Event | None
    ) -> list[Conditioning]:
        """Encode len(tokens) rows on the text stream (after `after`, an event recorded on
        the stream that produced `frames` after it was produced). frames: (n, 3, S, S)
        float [0, 255], or None (text only). The caller keeps `frames` alive until the
        results' `ready` event."""
        n = len(tokens)
        self.calls += 1
        self.rows += n
        streams = self.streams
        timed = self.timings_ms is not None and streams.cuda
        with streams.on_text():
            if streams.overlap:
                streams.wait(streams.text, after)
            if timed:
                t0 = torch.cuda.Event(enable_timing=True)
                t0.record()
            length = self.text.length_for(list(tokens))
            ids, mask = self.text.host_inputs(list(tokens), length)
            b = self._bucket(n)
            graph = self._graphs.get((b, length)) if frames is not None else None
            if graph is not None:
                if b > n:  # pad rows by repeating the last one (results dropped)
                    frames = torch.cat([frames, frames[-1:].expand(b - n, -1, -1, -1)])
                    ids = torch.cat([ids, ids[-1:].expand(b - n, -1)])
                hidden = graph(frames, ids)[:n].clone()  # own copy: the graph reuses its buffer
            else:
                hidden = self.text.forward(frames, ids)
            ready = streams.record(streams.text) if streams.overlap else None
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
        """Make `stream` wait for the given results (the caller keeps them alive until
        that stream is done with them)."""
        if stream is None:
            return
        for event in {id(c.ready): c.ready for c in items if c.ready is not None}.values():
            stream.wait_event(event)

    def clear(self) -> None:
        self._graphs.clear()
