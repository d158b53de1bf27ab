"""Per-session temporal conditioning for the LLLite adapter.

Each session keeps its adapter embedding (one tensor per active site) and refreshes it:
at once (from the current input frame) on its first frame, a new prompt or a scene cut;
every `lllite_refresh` steps from its previous stylized output warped by optical flow.
The flow runs on worker threads (pipeline/temporal.py); its result is picked up by the
first step after it finished, so a step never waits for it. The conditioning CNNs run
on the side stream for the sessions being refreshed only; every step the batch rows'
embeddings and strengths are written into the adapters' persistent buffers on the main
stream, right before the compiled graph reads them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import DiffusionConfig
from pipeline.diffusion.lllite import AdapterBank, load_adapter
from pipeline.diffusion.streams import to_device
from pipeline.preview import fit_square
from pipeline.temporal import SceneCutDetector, WarpWorkers

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AdapterSession:
    strength: float
    cuts: SceneCutDetector
    embedding: list[torch.Tensor] | None = None
    steps: int = 0
    restart: bool = True
    """Refresh from the input itself at the next step (first frame, new prompt)."""
    prev_input: np.ndarray | None = None
    prev_output: np.ndarray | None = None
    job: Future[np.ndarray] | None = None
    refreshes: list[str] = field(default_factory=list)
    """Why each refresh happened ('start', 'cut', 'periodic'): tests and logs."""


class AdapterStage:
    def __init__(
        self, bank: AdapterBank, *, refresh: int, cut_threshold: float, strength: float, size: int, device: torch.device
    ) -> None:
        self.bank = bank
        self.refresh = refresh
        self.cut_threshold = cut_threshold
        self.strength = strength
        self.size = size
        self.device = device
        self.workers = WarpWorkers()
        self.sessions: dict[str, AdapterSession] = {}
        self.counts: Counter[str] = Counter()
        """Refreshes by reason, all sessions (benchmarks)."""

    @classmethod
    def build(
        cls, config: DiffusionConfig, unet: Any, max_batch: int, latent: int, size: int, device: torch.device
    ) -> AdapterStage | None:
        """The adapter of config.lllite installed into the UNet, or None without one."""
        if not config.lllite:
            return None
        loaded = load_adapter(Path(config.lllite), unet, config.lllite_blocks)
        bank = AdapterBank(unet, loaded, max_batch, latent=latent)
        log.info(
            "temporal adapter: %d sites (%s), %d checkpoint keys not used",
            len(bank.sites),
            config.lllite_blocks,
            loaded.ignored_keys,
        )
        return cls(
            bank,
            refresh=config.lllite_refresh,
            cut_threshold=config.scene_cut_threshold,
            strength=config.adapter_strength,
            size=size,
            device=device,
        )

    def open(self, session_id: str) -> None:
        self.sessions[session_id] = AdapterSession(self.strength, SceneCutDetector(self.cut_threshold))

    def close(self, session_id: str) -> None:
        s = self.sessions.pop(session_id, None)
        if s is not None and s.job is not None:
            s.job.cancel()

    def restart(self, session_id: str) -> None:
        """A new prompt: the previous output has the old style; condition on the input."""
        self.sessions[session_id].restart = True

    def set_strength(self, session_id: str, value: float) -> None:
        if not 0.0 <= value <= 1.5:
            raise ValueError(f"adapter strength {value} is outside 0..1.5")
        self.sessions[session_id].strength = value

    def plan(self, frames: Sequence[tuple[str, np.ndarray]]) -> list[tuple[AdapterSession, np.ndarray]]:
        """Host side, per unique session (its first frame in the batch): which sessions get a
        new embedding this step, from which image. Launches periodic warp jobs."""
        todo: list[tuple[AdapterSession, np.ndarray]] = []
        for session_id, image in frames:
            s = self.sessions[session_id]
            square = fit_square(image, self.size)
            cut = s.cuts.update(square)
            if s.embedding is None or s.restart or cut:
                if s.job is not None:
                    s.job.cancel()
                    s.job = None
                todo.append((s, square))
                reason = "cut" if cut and s.embedding is not None and not s.restart else "start"
                s.refreshes.append(reason)
                self.counts[reason] += 1
                s.restart = False
                s.steps = 0
            elif s.job is not None and s.job.done():
                job, s.job = s.job, None
                if not job.cancelled() and job.exception() is None:
                    todo.append((s, job.result()))
                    s.refreshes.append("periodic")
                    self.counts["periodic"] += 1
            elif s.job is None and s.steps >= self.refresh and s.prev_output is not None and s.prev_input is not None:
                s.job = self.workers.submit(s.prev_output, s.prev_input, square)
                s.steps = 0
            s.prev_input = square
            s.steps += 1
        return todo

    @torch.inference_mode()
    def embed(self, todo: Sequence[tuple[AdapterSession, np.ndarray]], main: torch.cuda.Stream | None) -> None:
        """Run the conditioning CNNs (current stream) for the planned sessions."""
        if not todo:
            return
        images = to_device(torch.from_numpy(np.stack([img for _, img in todo])), self.device)
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        per_site = self.bank.embed(x)
        for i, (s, _) in enumerate(todo):
            s.embedding = [e[i] for e in per_site]
        if main is not None:
            for e in per_site:
                e.record_stream(main)

    def write(self, session_ids: Sequence[str]) -> None:
        """Fill the adapters' buffers for the batch rows (call on the main stream)."""
        rows = [self.sessions[sid] for sid in session_ids]
        self.bank.write_rows([s.embedding for s in rows], [s.strength for s in rows])  # type: ignore[misc]

    def record_output(self, session_id: str, image: np.ndarray) -> None:
        s = self.sessions.get(session_id)
        if s is not None:
            s.prev_output = image

    def close_all(self) -> None:
        self.workers.close()
        self.sessions.clear()
