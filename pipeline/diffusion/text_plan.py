"""Per-session text-conditioning state and the per-step plan: which sessions get fresh
conditioning, blocking or in the background (conditioning.py runs it on the text
stream).

Stream order (the fix of issue #15 part 5): the rows a text launch reads are gathered
on the side stream FIRST, then the "inputs ready" event is recorded, then the text
stream waits on it; the gathered tensor (allocated on the side stream, read on the text
stream) is kept alive until the text stream's own event has fired. `legacy_order`
restores the old order (event before the gather, gathered rows freed at once) for the
stress check in bench/stream_check.py, which must fail with it on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import DiffusionConfig
from pipeline.diffusion.conditioning import Conditioning, TextStage
from pipeline.diffusion.streams import KeepAlive, StreamSet, gather_rows
from pipeline.diffusion.text import PromptTokens, TextConditioner

PROMPT_CACHE = 256
"""Text-only mode: conditionings kept per prompt (shared by sessions)."""


@dataclass(eq=False)  # identity semantics: sessions are compared and hashed as objects
class DiffusionSession:
    prompt: str
    tokens: PromptTokens
    noise: torch.Tensor
    """(1, 4, h, w) fixed noise in the model dtype (allocated on the side stream)."""
    current: Conditioning | None = None
    """The conditioning frames are made with."""
    pending: Conditioning | None = None
    """A background refresh, swapped in once its event has fired."""
    steps_since_text: int = 0
    text_stale: bool = True
    """True after a prompt change: the next frame must wait for fresh conditioning."""
    blend_from: Conditioning | None = None
    """The old prompt's conditioning while a prompt change blends in."""
    blend_step: int = 0
    """Blended steps made so far."""


def start_blend(s: DiffusionSession, steps: int) -> None:
    """A prompt change: blend from what frames show now (the old prompt's conditioning,
    or the start of a blend still under way) over the next `steps` steps."""
    if steps > 0 and s.current is not None:
        if s.blend_from is None:
            s.blend_from = s.current
        s.blend_step = 0


def blended(sessions: list[DiffusionSession], per_row: list[Conditioning], steps: int) -> list[Conditioning]:
    """Each row's conditioning with a prompt change blending in: step k of `steps` uses
    (k+1)/(steps+1) of the new one (lerp of the hidden states; the masks' union, so both
    prompts' tokens are attended). Run on the side stream after waiting for both."""
    out = list(per_row)
    weights: dict[int, float] = {}
    for i, s in enumerate(sessions):
        if s.blend_from is None or i >= len(per_row):
            continue
        w = weights.setdefault(id(s), (s.blend_step + 1) / (steps + 1))
        old, new = s.blend_from, per_row[i]
        out[i] = Conditioning(torch.lerp(old.cond, new.cond, w), torch.maximum(old.mask, new.mask))
    return out


def advance_blends(sessions: list[DiffusionSession], steps: int) -> None:
    """After a step: one more blended step per blending session; done after `steps`."""
    for s in {id(x): x for x in sessions}.values():
        if s.blend_from is not None:
            s.blend_step += 1
            if s.blend_step >= steps:
                s.blend_from, s.blend_step = None, 0


class TextPlanner:
    def __init__(
        self,
        config: DiffusionConfig,
        text: TextConditioner,
        stage: TextStage,
        streams: StreamSet,
        keep: KeepAlive,
    ) -> None:
        self.config = config
        self.text = text
        self.stage = stage
        self.streams = streams
        self.keep = keep
        self.text_only = config.text_mode == "prompt"
        self.legacy_order = False
        """Stress-check switch: the pre-fix stream order (see the module docstring)."""
        self.race_window_cycles = 0
        """Stress-check switch: GPU cycles the side stream idles just before each gather
        kernel, after any host wait on the side stream (CUDA only). It widens the window
        in which the legacy order lets the text stream read rows not yet gathered; in the
        fixed order the event follows the gather, so the idle costs time and nothing else."""
        self._prompt_cache: dict[str, Conditioning] = {}

    def tokens(self, prompt: str) -> PromptTokens:
        return self.text.tokens(prompt, with_image=not self.text_only)

    def conditioning(self, sessions: list[DiffusionSession], pixels: torch.Tensor) -> list[Conditioning]:
        """The text conditioning of every row (call on the side stream), launching the
        text encoder where needed: one row per session (its first frame in the batch is
        the representative frame), or every frame in clip mode with representative_frame
        off and mode 'every'."""
        if self.text_only:
            return [self._prompt_only(s) for s in sessions]
        mode = self.config.text_mode
        unique = list({id(s): s for s in sessions}.values())
        for s in unique:  # finished background refreshes take over now
            if s.pending is not None and s.pending.is_ready():
                s.current, s.pending = s.pending, None
        if mode == "every" and not self.config.representative_frame and len(unique) < len(sessions):
            results = self._encode(pixels, list(range(len(sessions))), [s.tokens for s in sessions])
            for s, c in zip(sessions, results, strict=True):
                s.current, s.text_stale, s.steps_since_text = c, False, 0
            return results
        first_row: dict[int, int] = {}
        for i, s in enumerate(sessions):
            first_row.setdefault(id(s), i)
        blocking = [s for s in unique if s.current is None or s.text_stale or mode == "every"]
        background = [
            s
            for s in unique
            if s not in blocking
            and mode == "refresh"
            and s.pending is None
            and s.steps_since_text >= self.config.text_refresh
        ]
        for group, wait in ((blocking, True), (background, False)):
            if not group:
                continue
            results = self._encode(pixels, [first_row[id(s)] for s in group], [s.tokens for s in group])
            for s, c in zip(group, results, strict=True):
                if wait:
                    s.current, s.pending, s.text_stale = c, None, False
                else:
                    s.pending = c
                s.steps_since_text = 0
        return [s.current for s in sessions]  # type: ignore[misc]

    def _encode(self, pixels: torch.Tensor, rows: list[int], tokens: list[PromptTokens]) -> list[Conditioning]:
        if self.legacy_order:
            after = self.streams.record()  # before the gather: the bug this module fixes
            # A blocking host->device copy: the host waits here for the side stream, so
            # the idle goes after it (before it, the wait would swallow the window).
            index = torch.tensor(rows, device=pixels.device)
            self._idle_before_gather()
            return self.stage.encode(pixels.index_select(0, index), tokens, after)
        self._idle_before_gather()
        frames = gather_rows(pixels, rows)
        after = self.streams.record()  # side stream, after the gather was queued
        results = self.stage.encode(frames, tokens, after)
        self.keep.hold(results[0].ready, frames)  # read on the text stream until `ready`
        return results

    def _idle_before_gather(self) -> None:
        if self.race_window_cycles and self.streams.cuda:
            torch.cuda._sleep(self.race_window_cycles)

    def _prompt_only(self, s: DiffusionSession) -> Conditioning:
        cached = self._prompt_cache.get(s.prompt)
        if cached is None:
            cached = self.stage.encode(None, [s.tokens], None)[0]
            if len(self._prompt_cache) >= PROMPT_CACHE:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[s.prompt] = cached
        s.current, s.text_stale = cached, False
        return cached

    def clear(self) -> None:
        self._prompt_cache.clear()
