"""Compiled artifacts on disk, so a restart of the same configuration skips inductor.

Two layers, both under one directory (DiffusionConfig.compile_cache_dir, default
~/.cache/livestyle/compile; a volume in docker-compose):

* inductor's and Triton's own on-disk caches (FX graphs, AOTAutograd entries, Triton
  kernels) are pointed there before anything compiles (their default lives in /tmp and
  dies with the container);
* torch.compile's mega-cache (torch.compiler.save/load_cache_artifacts): one file per
  key (card, versions, bucket set, every setting that changes a graph), hot-loaded at
  start and written after a warm-up that compiled something new.

What a cached start still pays: dynamo tracing of each bucket's graph, CUDA-graph
recording and the warm-up runs; inductor's codegen and Triton's compiles are skipped.
compile='precompile' and 'aot' keep one file per bucket under <directory>/precompiled
(precompile.py) or <directory>/aot (aot.py): a start that finds them pays no tracing.
Failures here are never fatal: the engine compiles from scratch instead, with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the compiled graphs change in a way their inputs do not show."""


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_cache_parts(
    config: Any, device: torch.device, components: Any, buckets: tuple[int, ...], size: int
) -> dict[str, Any]:
    """Everything a compiled graph of this engine depends on besides its code: the card,
    driver and library versions, the bucket set and every setting that changes a graph."""
    from pipeline.diffusion.device import describe_device

    facts = describe_device(device)
    facts.pop("gpu_memory_gb", None)
    fields = ("steps", "text_tokens", "text_image_size", "compile", "lllite", "lllite_blocks", "channels_last")
    fields += ("fuse_qkv", "fp8", "inductor", "text_compile", "text_prefix_cache", "text_length_step")
    fields += ("stream_priorities",)
    return {
        **facts,
        "triton": package_version("triton"),
        "buckets": buckets,
        "size": size,
        "dtype": str(components.unet.dtype),
        "unet": graph_config(components.unet.config),
        "vae": graph_config(components.vae.config),
        **{k: getattr(config, k) for k in fields},
    }


NOT_GRAPH_KEYS = ("_use_default_values", "_name_or_path")
"""diffusers' bookkeeping in a model config that no graph depends on. `_use_default_values`
is built from a set, so its order changes with each process's string hashing: in the key it
made every start a "first start" that wrote one more mega-cache file."""


def graph_config(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config).items() if k not in NOT_GRAPH_KEYS}


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CompileCache:
    def __init__(self, directory: str | None, parts: dict[str, Any]) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.key = cache_key(parts)
        self.parts = parts
        self.loaded = False
        """True when this start hot-loaded a mega-cache file."""

    @property
    def file(self) -> Path | None:
        return None if self.directory is None else self.directory / "mega" / f"{self.key}.bin"

    @property
    def package_key(self) -> str:
        """The key without the bucket set, for the per-bucket files of compile='precompile'
        and 'aot' (<directory>/precompiled, <directory>/aot): adding a bucket to the
        configuration leaves the others' files valid."""
        return cache_key({**self.parts, "buckets": None})

    def prepare(self, mega: bool = True) -> None:
        """Point inductor/Triton at the directory and hot-load the mega-cache (before
        the first torch.compile call runs). mega=False (the stored modes, whose graphs
        are files per bucket): the directories only."""
        if self.directory is None:
            return
        try:
            (self.directory / "mega").mkdir(parents=True, exist_ok=True)
            # Inductor reads these on every lookup (and hands them to its compile workers
            # per task). Importing its config already pinned TORCHINDUCTOR_CACHE_DIR to its
            # /tmp default, so that value counts as unset; any other explicit setting wins.
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            defaults = {"TORCHINDUCTOR_CACHE_DIR": os.path.abspath(default_cache_dir()), "TRITON_CACHE_DIR": None}
            for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
                if os.environ.get(var) in (None, "", defaults[var]):
                    os.environ[var] = str(self.directory / sub)
            for config, name in (
                (torch._inductor.config, "fx_graph_cache"),
                (torch._functorch.config, "enable_autograd_cache"),
            ):
                if hasattr(config, name):  # both on by default in recent torch; named in case of an override
                    setattr(config, name, True)
        except Exception as exc:  # noqa: BLE001 - a cache is an optimisation
            log.warning("compile cache %s is not usable (%s); compiling without it", self.directory, exc)
            self.directory = None
            return
        if not mega:
            log.info("compile cache: %s (graphs stored per bucket; no mega-cache entry)", self.directory)
            return
        file = self.file
        if file is None or not file.is_file():
            log.info("compile cache: no entry %s yet (first start of this configuration)", self.key)
            return
        try:
            info = torch.compiler.load_cache_artifacts(file.read_bytes())
            self.loaded = True
            os.utime(file)  # recently used: pruned last
            log.info("compile cache: loaded %s (%s)", file, _summary(info))
        except Exception as exc:  # noqa: BLE001
            log.warning("compile cache entry %s could not be loaded (%s); compiling from scratch", file, exc)

    def save(self) -> None:
        """After warm-up: write what this process compiled (atomically), unless this
        start was served from the file already."""
        file = self.file
        if file is None or self.loaded:
            return
        try:
            result = torch.compiler.save_cache_artifacts()
            if result is None:
                return
            data, info = result
            with tempfile.NamedTemporaryFile(dir=file.parent, delete=False, prefix=".tmp-") as tmp:
                tmp.write(data)
            os.replace(tmp.name, file)
            (file.parent / f"{self.key}.json").write_text(json.dumps(self.parts, indent=1, default=str))
            log.info("compile cache: wrote %s (%.1f MB, %s)", file, len(data) / 2**20, _summary(info))
            prune(file.parent, keep=MAX_ENTRIES)
        except Exception as exc:  # noqa: BLE001
            log.warning("compile cache entry %s could not be written (%s)", file, exc)


MAX_ENTRIES = 8
"""Mega-cache files kept (one per configuration, ~150-200 MB each for the full model): the
least recently written or loaded beyond this are deleted, so a volume shared by many configurations,
or by versions of the code over time, stays bounded."""


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest *.bin entries (and their .json); returns the deleted."""
    entries = sorted(directory.glob("*.bin"), key=lambda f: f.stat().st_mtime, reverse=True)
    removed = entries[keep:]
    for entry in removed:
        for path in (entry, entry.with_suffix(".json")):
            path.unlink(missing_ok=True)
        log.info("compile cache: removed %s (more than %d entries)", entry.name, keep)
    return removed


def _summary(info: Any) -> str:
    artifacts = getattr(info, "artifacts", None)
    if not isinstance(artifacts, dict):
        return "no details"
    return ", ".join(f"{k}: {len(v)}" for k, v in artifacts.items() if v) or "empty"
