"""compile='aot': the UNet+decode graph as one AOTInductor package per bucket on disk,
loaded at start and CUDA-graphed by hand.

Why: a torch.compile start served from the compile cache still runs dynamo over every
bucket's graph (about 22 s per bucket on the H200 host, 96.6 s for buckets 1, 8, 16:
bench/results/2026-12-02-NVIDIA-H200-webrtc-media-2.json). A package is the compiled
graph itself (a shared library plus its Triton kernels): loading one skips tracing,
AOTAutograd and inductor altogether. The first start of a configuration pays
torch.export plus the same inductor compile as before.

Once loaded, the graph is pointed at the live module's parameters and buffers
(`load_constants(user_managed=True)`), so the adapter's per-session buffers written
between steps are seen. Small tensors would otherwise be inlined into the code as
literals (`always_keep_tensor_constants` stops that); a load also checks that every
buffer the graph read at export time is one it reads from the module.

Packages keep torch's default of the weights inside the library (about 0.8 GB for the
full model, loaded once more on the GPU per bucket): on the H200 with torch 2.11 a
package built without them (`package_constants_in_so` off) crashed the loading process
with a segmentation fault, for a full-size bucket and for a two-layer module alike
(issue #16's notes). Since a crash cannot be caught, each new package is first loaded by
a child process; only a package that loaded there is used and kept.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.diffusion.graphs import GraphedCall

log = logging.getLogger(__name__)

AOT_CONFIGS: dict[str, Any] = {"always_keep_tensor_constants": True}

MAX_PACKAGES = 10
"""Packages kept in the cache directory (one per configuration and bucket, about 0.8 GB
each with the full model's weights): two configurations of five buckets. The least
recently built or loaded beyond this are deleted."""

CHECK_S = 180.0
"""How long the child process that first loads a new package may take."""

CHECK_SOURCE = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1]).get_constant_fqns()"


class AotUnavailable(RuntimeError):
    """This torch cannot run a package the way the engine needs (the caller compiles
    with torch.compile instead)."""


def _check_torch() -> None:
    inductor = getattr(torch, "_inductor", None)
    if not hasattr(inductor, "aoti_compile_and_package") or not hasattr(inductor, "aoti_load_package"):
        raise AotUnavailable(f"torch {torch.__version__} has no AOTInductor packages")


def _buffers_read(program: Any) -> list[str]:
    return sorted(set(program.graph_signature.inputs_to_buffers.values()))


class GraphStore(Protocol):
    """Compiled graphs on disk, one per bucket: AotStore here, precompile.PrecompileStore."""

    kind: str
    """What one entry is called in warm-up progress."""

    def cached(self, bucket: int) -> bool: ...

    def build(self, module: nn.Module, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Path: ...

    def load(self, module: nn.Module, bucket: int) -> Callable[..., torch.Tensor]: ...

    def close(self) -> None: ...


class AotStore:
    """Where packages live: `<directory>/<key>-b<bucket>.pt2` with a .json beside it (what
    the graph reads). No directory: a temporary one, removed by close()."""

    kind = "package"

    def __init__(self, directory: Path | None, key: str) -> None:
        self._temporary = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="livestyle-aot-")) if directory is None else directory
        self.key = key

    def path(self, bucket: int) -> Path:
        return self.directory / f"{self.key}-b{bucket}.pt2"

    def cached(self, bucket: int) -> bool:
        return self.path(bucket).is_file() and self.path(bucket).with_suffix(".json").is_file()

    def build(self, module: nn.Module, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Path:
        """torch.export + AOTInductor; the package is written under a temporary name and
        renamed, so a process killed mid-build leaves no half file under the real one."""
        _check_torch()
        bucket = inputs[0].shape[0]
        target = self.path(bucket)
        self.directory.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode(False), torch.no_grad():
            example = tuple(t.clone() for t in inputs)  # inference tensors cannot be traced
            program = torch.export.export(module, example, strict=False)
        tmp = self.directory / f".tmp-{os.getpid()}-{target.name}"
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp), inductor_configs={**options, **AOT_CONFIGS}
        )
        try:
            check_in_child(tmp)
        except AotUnavailable:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        # Written last: a package without its .json is not cached (cached()).
        target.with_suffix(".json").write_text(json.dumps({"buffers": _buffers_read(program)}))
        prune(self.directory, keep=MAX_PACKAGES)
        return target

    def load(self, module: nn.Module, bucket: int) -> Callable[..., torch.Tensor]:
        """The package's graph, reading `module`'s own tensors."""
        _check_torch()
        path = self.path(bucket)
        reads = json.loads(path.with_suffix(".json").read_text())["buffers"]
        compiled = torch._inductor.aoti_load_package(str(path))
        if "user_managed" not in inspect.signature(compiled.load_constants).parameters:
            raise AotUnavailable(f"torch {torch.__version__} cannot share weights with a package (no user_managed)")
        tensors = dict(module.named_parameters(remove_duplicate=False))
        tensors.update(module.named_buffers(remove_duplicate=False))
        fqns = compiled.get_constant_fqns()
        missing = [name for name in fqns if name not in tensors]
        inlined = [name for name in reads if name not in fqns]
        if missing or inlined:
            raise AotUnavailable(
                f"package {path.name} does not match the module (unknown constants {missing[:3]}, "
                f"buffers compiled in as literals {inlined[:3]})"
            )
        compiled.load_constants({n: tensors[n] for n in fqns}, check_full_update=True, user_managed=True)
        os.utime(path)  # recently used: pruned last
        return compiled

    def close(self) -> None:
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)


def check_in_child(package: Path) -> None:
    """Load the package in a child process first: a loader that crashes (see the module
    docstring) takes the child down, not the engine."""
    cmd = [sys.executable, "-X", "faulthandler", "-c", CHECK_SOURCE, str(package)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AotUnavailable(f"loading package {package.name} took over {CHECK_S:.0f} s in a child process") from exc
    if done.returncode != 0:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-4:])
        raise AotUnavailable(f"loading package {package.name} failed in a child process ({how}): {tail[-400:]}")


def prune(directory: Path, keep: int, suffix: str = ".pt2") -> list[Path]:
    """Delete all but the `keep` most recently used files ending in `suffix` (and a .json
    beside each)."""
    done = [f for f in directory.glob(f"*{suffix}") if not f.name.startswith(".tmp-")]  # not a build under way
    entries = sorted(done, key=lambda f: f.stat().st_mtime, reverse=True)
    for entry in entries[keep:]:
        entry.unlink(missing_ok=True)
        entry.with_suffix(".json").unlink(missing_ok=True)
        log.info("compile cache: removed %s (more than %d kept)", entry.name, keep)
    return entries[keep:]


class AotBuckets:
    """The compiled function of compile='aot' and 'precompile': per batch size, a graph
    loaded from the store (built first when it has none) and, on CUDA, captured in one
    CUDA graph. Buckets are prepared on their first call, which warm-up makes for every
    bucket."""

    def __init__(self, module: nn.Module, store: GraphStore, options: dict[str, Any], cuda: bool) -> None:
        self.module, self.store, self.options, self.cuda = module, store, options, cuda
        self._graphs: dict[int, Callable[..., torch.Tensor]] = {}
        self.built: list[int] = []
        """Buckets this process compiled (the rest were loaded from the store)."""

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        bucket = inputs[0].shape[0]
        graph = self._graphs.get(bucket)
        if graph is None:
            graph = self._graphs[bucket] = self._prepare(bucket, inputs)
        return graph(*inputs)

    def _prepare(self, bucket: int, inputs: Sequence[torch.Tensor]) -> Callable[..., torch.Tensor]:
        if self.cuda:
            # GraphedCall captures the graph on copies made in the caller's mode (inference
            # tensors in the engine): build from such copies too, as dynamo's guards on a
            # precompiled graph compare the tensors' dispatch keys with the traced ones.
            inputs = [t.clone() for t in inputs]
        if self.store.cached(bucket):
            try:
                return self._ready(self.store.load(self.module, bucket), inputs)
            except AotUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a stale or damaged graph: build it again
                kind = self.store.kind
                log.warning("compiled %s for bucket %d could not be loaded (%s); compiling it again", kind, bucket, exc)
        self.store.build(self.module, inputs, self.options)
        self.built.append(bucket)
        return self._ready(self.store.load(self.module, bucket), inputs)

    def _ready(self, runner: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Callable[..., Any]:
        """Captured on CUDA; on the CPU run once. Either way a loaded graph that refuses
        these inputs (a precompiled graph's guards) fails here, where it is rebuilt, not
        in a later step."""
        if self.cuda:
            return GraphedCall(runner, inputs)
        runner(*inputs)
        return runner

    def close(self) -> None:
        self._graphs.clear()
        self.store.close()
