"""Settings of `livestyle eval` (built by server/config.py, the only reader of argv/env)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, EngineConfig


@dataclass(frozen=True)
class EvalConfig:
    """`livestyle eval INPUT STYLIZED` or `livestyle eval INPUT --sweep --prompt P`."""

    input: Path
    """The original video."""
    stylized: Path | None
    """Its stylized version (None with --sweep: the sweep makes one per setting)."""
    out_dir: Path
    """Folder for the JSON and the PNG plots (created; its parent must exist)."""
    max_frames: int | None = None
    """Compare (and, with --sweep, stylize) only the first N frames; None = all."""
    cut_threshold: float = 0.3
    """Histogram distance that counts as a scene cut (the engine's detector and default)."""
    sweep: tuple[tuple[str, EngineConfig], ...] = ()
    """With --sweep: each setting's label and engine configuration, in run order."""
    prompt: str = ""
    """Style prompt of the sweep's runs."""
    log_level: str = "info"
    """Logging level."""

    def __post_init__(self) -> None:
        videos = [("INPUT", self.input)] + ([("STYLIZED", self.stylized)] if self.stylized is not None else [])
        for name, path in videos:
            if not path.is_file():
                what = "is a folder, not a video file" if path.is_dir() else "does not exist"
                raise ConfigError(f"{name} video {path} {what}; give the path of a video file ({name})")
        if self.sweep and self.stylized is not None:
            raise ConfigError("with --sweep give INPUT only: the sweep stylizes it once per setting (drop STYLIZED)")
        if not self.sweep and self.stylized is None:
            raise ConfigError("give the stylized video to compare (livestyle eval INPUT STYLIZED), or --sweep")
        if self.sweep and not self.prompt:
            raise ConfigError("--sweep needs a style: add --prompt, e.g. --prompt 'oil painting'")
        if self.max_frames is not None and self.max_frames < 2:
            raise ConfigError(f"--max-frames {self.max_frames} is not allowed; use 2 or more (or leave it out: all)")
        if not 0.0 < self.cut_threshold < 1.0:
            raise ConfigError(f"--cut-threshold {self.cut_threshold} is not allowed; use a value in (0, 1)")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"--out {self.out_dir} is a file; give a folder for the report")
        parent = self.out_dir if self.out_dir.is_dir() else self.out_dir.parent
        if not parent.is_dir():
            raise ConfigError(f"the folder {parent} for --out does not exist; create it first (mkdir -p {parent})")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"the folder {parent} is not writable by this user; choose another --out")
