"""paper_point and the adapter sweep: the engine with the temporal LLLite adapter (a
checkpoint with the published v3 layout and random weights), one compiled bucket-8 graph
per adapter layout, shared by both scenarios."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.clip_runs import run_clip, text_settings
from bench.harness import adapter_layouts
from bench.run import BUDGET
from pipeline.config import EngineConfig
from pipeline.core import EngineCore
from pipeline.diffusion import tuning

if TYPE_CHECKING:
    from bench.engine_scenarios import EngineScenarios


class AdapterScenarios:
    def __init__(self, runner: EngineScenarios) -> None:
        self.runner = runner
        self.config = runner.config
        self.out = runner.out

    def run(self, components: Any, frames: list[np.ndarray]) -> None:
        """paper_point and the adapter sweep: each adapter layout is its own compiled graph
        (bucket 8), shared by both scenarios."""
        from pipeline.diffusion.lllite import synthesize_checkpoint

        c = self.config
        layouts = adapter_layouts(c)
        if not layouts:
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "lllite_v3_random.safetensors"
            synthesize_checkpoint(components.unet, checkpoint)
            for blocks in layouts:
                if not self.runner.clock.begin(f"lllite:{blocks}"):
                    self.out.skip(f"adapter engine {blocks}", BUDGET)
                    continue
                diffusion = c.diffusion_config(
                    text_mode="every",
                    representative_frame=True,
                    buckets=(8,),
                    lllite=str(checkpoint),
                    lllite_blocks=blocks,
                    lllite_refresh=8,
                )
                engine = EngineConfig(
                    kind="diffusion", model=c.model, max_batch=8, device=c.device, size=c.size, diffusion=diffusion
                )
                core, backend = self.runner.build(f"lllite_{blocks}", engine, components)
                if blocks == "down_blocks" and self.runner.wanted("paper_point"):
                    self.paper_point(core, backend, frames)
                if blocks in c.adapter_blocks and self.runner.wanted("adapter", f"adapter:{blocks}"):
                    self.adapter_sweep(core, backend, frames)
                core.close()

    def adapter_record(self, backend: Any, refresh: int) -> dict[str, Any]:
        adapter = backend.adapter
        return {
            "blocks": backend.config.lllite_blocks,
            "sites": len(adapter.bank.sites),
            "refresh": refresh,
            "refreshes_done": dict(adapter.counts),
        }

    def paper_point(self, core: EngineCore, backend: Any, frames: list[np.ndarray]) -> None:
        """The paper's configuration: B=8, the text encoder every batch on one representative
        frame, LLLite on the 38 down-block sites refreshed every 8 steps, one step, 512x512."""
        tuning.reconfigure_text(backend, text_mode="every", representative_frame=True)
        backend.adapter.refresh = 8
        backend.adapter.counts.clear()
        row = run_clip(core, frames, 8, self.config.frames, self.config.prompt)
        self.out.scenarios["paper_point"] = {
            "text": text_settings(backend),
            "adapter": self.adapter_record(backend, 8),
            "steps": backend.config.steps,
            "size": backend.size,
            "row": row,
        }
        self.out.save()

    def adapter_sweep(self, core: EngineCore, backend: Any, frames: list[np.ndarray]) -> None:
        """Cached prompt, B=8, per refresh period; the cached_prompt scenario is the adapter off."""
        tuning.reconfigure_text(backend, text_mode="refresh", text_refresh=16, representative_frame=True)
        section = self.out.scenarios.setdefault("adapter", {"text": text_settings(backend), "rows": []})
        for refresh in self.config.adapter_refresh:
            backend.adapter.refresh = refresh
            backend.adapter.counts.clear()
            self.runner.clock(f"adapter {backend.config.lllite_blocks}, refresh every {refresh}")
            row = run_clip(core, frames, 8, self.config.frames, self.config.prompt)
            section["rows"].append({"adapter": self.adapter_record(backend, refresh), "row": row})
            self.out.save()
