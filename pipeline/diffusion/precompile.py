"""compile='precompile': the UNet+decode graph as torch.compile builds it, saved per
bucket with dynamo's precompile (`torch.compile(...).aot_compile`) and loaded at the
next start without tracing; CUDA-graphed by hand like compile='aot'.

Why a second route beside aot.py: a cached torch.compile start still runs dynamo over
every bucket's graph (about 22 s per bucket on the H200 host), and the AOTInductor
packages of compile='aot' crashed their loader on the H200 with torch 2.11 (aot.py). A
precompiled function is dynamo's own output (its bytecode, guards and inductor's
compiled graph) serialized; loading it runs none of dynamo, AOTAutograd or inductor's
lowering, and the kernels come from inductor's and Triton's caches under the same
compile-cache directory (compile_cache.py), as for a cached torch.compile start.

The module is an argument of the compiled function, not a constant of it: its
parameters and buffers are read from the live module on every call (the adapter writes
its buffers between steps), and the file holds no weights (kilobytes, not the 0.8 GB
of a package). torch 2.11 keeps the feature behind torch._dynamo.config
.enable_aot_compile; a file from another torch, card or driver fails its load's
compatibility check, and one whose traced sources changed fails check_sources; both are
built again (AotBuckets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch._dynamo.guards
import torch._dynamo.package
from torch import nn

from pipeline.diffusion.aot import AotUnavailable, prune

log = logging.getLogger(__name__)

MAX_FILES = 40
"""Precompiled graphs kept (per configuration and bucket one of the UNet+decode graph and
one of the VAE encoder; megabytes each: the graph's code and the sources it traced, no
weights): four configurations of five buckets. The least recently built or loaded beyond
this are deleted."""

SUFFIX = ".bin"


def _check_torch() -> None:
    if not hasattr(torch.compiler, "load_compiled_function") or not hasattr(torch._dynamo.config, "enable_aot_compile"):
        raise AotUnavailable(f"torch {torch.__version__} has no dynamo precompile (torch.compile(...).aot_compile)")


UNSERIALIZABLE_GUARDS: tuple[str, ...] = getattr(
    torch._dynamo.guards.CheckFunctionManager,
    "UNSUPPORTED_SERIALIZATION_GUARD_TYPES",
    ("DICT_VERSION", "NN_MODULE", "ID_MATCH", "FUNCTION_MATCH", "CLASS_MATCH", "MODULE_MATCH", "CLOSURE_MATCH"),
)


def serializable_guards(entries: Sequence[Any]) -> list[bool]:
    """Which of dynamo's guards to keep: all but those on object identity (ids of
    modules, functions, code objects), which cannot outlive the process; dynamo refuses
    to save a graph that has any. Diffusers' code makes plenty (its Attention inspects its
    processor's signature on every call). What they guard is the module's structure and
    the libraries' code: the store key fixes the configuration and versions, and one
    engine never changes its modules after their graphs are built. Tensor, shape and
    global-state guards stay."""
    return [
        entry.guard_type not in UNSERIALIZABLE_GUARDS
        and not any(t in UNSERIALIZABLE_GUARDS for t in entry.derived_guard_types or ())
        for entry in entries
    ]


def _init_fields_reduce(self: Any) -> tuple[Any, tuple[Any, ...]]:
    fields = dataclasses.fields(self)
    return self.__class__, tuple(getattr(self, f.name) for f in fields if f.init)


def repair_source_pickling() -> list[str]:
    """torch 2.11 pickles dynamo's guard sources with every dataclass field, including
    those computed in __post_init__ (init=False), so a saved graph that guards a function
    default (DefaultsSource; diffusers' code makes one) fails to load: "__init__() takes
    from 3 to 4 positional arguments but 6 were given". Later torch passes only the init
    fields; this gives the affected classes that rule. Names the classes it changed."""
    from torch._dynamo import source as sources

    changed = []
    for name, cls in vars(sources).items():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and "__reduce__" in vars(cls)):
            continue
        if all(f.init for f in dataclasses.fields(cls)) or vars(cls)["__reduce__"] is _init_fields_reduce:
            continue
        probe = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(probe, f.name, None)
        if len(cls.__reduce__(probe)[1]) != sum(f.init for f in dataclasses.fields(cls)):
            cls.__reduce__ = _init_fields_reduce  # type: ignore[method-assign]
            changed.append(name)
    return changed


class SourceChanged(RuntimeError):
    """A function the saved graph traced has changed since (the caller builds it again)."""


def _hash_lines(module: Any, first: int, last: int) -> str:
    hash_lines = getattr(torch._dynamo.package, "_hash_sourcelines", None)  # torch's own rule where it has one
    if hash_lines is not None:
        return str(hash_lines(module, first, last))
    lines = inspect.getsourcelines(module)[0][first - 1 : last - 1]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_sources(info: Any) -> None:
    """The identity guards were dropped (serializable_guards), and a loaded graph does not
    compare its sources itself: every function it traced (ours, diffusers', torch's) must
    read as it did when it was saved, or an upgrade would keep serving the old graph."""
    for code in info.inlined_sources:
        try:
            same = _hash_lines(importlib.import_module(code.module), code.firstlineno, code.lastlineno) == code.checksum
        except (ImportError, OSError, TypeError) as exc:
            raise SourceChanged(f"{code.module} cannot be read ({exc})") from exc
        if not same:
            raise SourceChanged(
                f"{code.module} lines {code.firstlineno}-{code.lastlineno} changed since the graph was saved"
            )


class PrecompileStore:
    """Where precompiled graphs live: `<directory>/<key>-b<bucket>.bin`. No directory: a
    temporary one, removed by close(). Same interface as aot.AotStore."""

    kind = "precompiled graph"

    def __init__(self, directory: Path | None, key: str) -> None:
        self._temporary = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="livestyle-precompile-")) if directory is None else directory
        self.key = key

    @classmethod
    def beside(cls, cache_directory: Path | None, key: str) -> PrecompileStore:
        """The store under a compile-cache directory (<directory>/precompiled)."""
        return cls(None if cache_directory is None else cache_directory / "precompiled", key)

    def path(self, bucket: int) -> Path:
        return self.directory / f"{self.key}-b{bucket}{SUFFIX}"

    def cached(self, bucket: int) -> bool:
        return self.path(bucket).is_file()

    def build(self, module: nn.Module, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Path:
        """Trace and compile `module.forward` for these input shapes (fullgraph, static),
        then write the result under a temporary name and rename it, so a process killed
        mid-write leaves no half file under the real one."""
        _check_torch()
        bucket = inputs[0].shape[0]
        target = self.path(bucket)
        self.directory.mkdir(parents=True, exist_ok=True)
        torch._dynamo.config.enable_aot_compile = True  # off by default in torch 2.11
        repair_source_pickling()
        forward = type(module).forward  # unbound: the module is an input, read live
        options = {**options, "guard_filter_fn": serializable_guards}
        compiled = torch.compile(forward, fullgraph=True, dynamic=False, options=options)
        function = compiled.aot_compile(((module, *inputs), {}))
        tmp = self.directory / f".tmp-{os.getpid()}-{target.name}"
        function.save_compiled_function(str(tmp))
        os.replace(tmp, target)
        prune(self.directory, keep=MAX_FILES, suffix=SUFFIX)
        return target

    def load(self, module: nn.Module, bucket: int) -> Callable[..., torch.Tensor]:
        """The saved graph, called with `module` as its first argument."""
        _check_torch()
        path = self.path(bucket)
        with path.open("rb") as fh:
            # The saved bytecode and guards read the globals of forward's own module.
            function = torch.compiler.load_compiled_function(fh, f_globals=type(module).forward.__globals__)
        check_sources(function.source_info())
        os.utime(path)  # recently used: pruned last

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            return function(module, *inputs)

        return run

    def close(self) -> None:
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)
