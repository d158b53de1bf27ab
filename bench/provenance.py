"""Where a result came from: the git commit, the host, library versions, and the argv and
effective configuration of every process of the run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ("aiortc", "av", "aiohttp", "numpy", "opencv-python-headless", "torch", "diffusers", "transformers")
REDACTED = "<redacted>"
ENV_PREFIX = "LIVESTYLE_"
MAX_CHANGED = 50
STAMP = REPO / ".source-commit.json"
"""Written by `python -m bench.provenance stamp` before a checkout's files are copied to
another machine (the lent GPU gets the working tree, with a .git that need not match it).
git_state() reads it instead of git where STAMP_ENV is set (or git fails), and says so."""
STAMP_ENV = "BENCH_USE_SOURCE_STAMP"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20, check=True
    ).stdout.rstrip()  # not strip(): porcelain lines start with a status column that may be a space


def git_state() -> dict[str, Any]:
    """{"commit", "dirty", "changed"} (tracked files that differ from the commit), or
    {"commit": None, "reason"} outside a git checkout."""
    if os.environ.get(STAMP_ENV) == "1":
        if not STAMP.is_file():
            return {"commit": None, "reason": f"{STAMP_ENV}=1 but {STAMP.name} is missing"}
        return _stamped()
    try:
        commit = _git("rev-parse", "HEAD")
        changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.SubprocessError) as exc:
        if STAMP.is_file():
            return _stamped()
        return {"commit": None, "reason": f"not a git checkout or git failed: {exc}"[:300]}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:MAX_CHANGED]}


def _stamped() -> dict[str, Any]:
    import json

    return {**json.loads(STAMP.read_text()), "source": f"{STAMP.name}, stamped in the checkout this copy came from"}


def write_stamp() -> None:
    """Record this checkout's git state next to its files, for a copy that travels without .git."""
    import json

    os.environ.pop(STAMP_ENV, None)
    state = git_state()
    if state.get("commit") is None:
        raise SystemExit(f"no git state to stamp: {state.get('reason')}")
    state.pop("source", None)
    STAMP.write_text(json.dumps(state) + "\n")
    print(f"stamped {STAMP.name}: {state['commit']} dirty={state['dirty']}")


def host_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # omitted: not installed here
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu or platform.processor() or "unknown",
        "cpu_count": os.cpu_count() or 0,
        "libraries": versions,
    }


def jsonable(value: Any) -> Any:
    """A config dataclass as JSON: fields in order, Paths/Fractions as strings, tuples as
    lists; fields declared with repr=False (secrets) redacted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: (REDACTED if not f.repr and getattr(value, f.name) else jsonable(getattr(value, f.name)))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Path | Fraction):
        return str(value)
    return value


def server_env() -> tuple[dict[str, str], list[str]]:
    """The environment for a server process the harness starts: ours without LIVESTYLE_*
    variables, so its configuration is its argv alone. Returns (env, removed names)."""
    removed = sorted(k for k in os.environ if k.startswith(ENV_PREFIX))
    return {k: v for k, v in os.environ.items() if k not in removed}, removed


def server_record(name: str, argv: Sequence[str], removed_env: Sequence[str]) -> dict[str, Any]:
    """A `livestyle serve` process: its argv and the ServerConfig the server's own config
    code computes from it (argv[0:4] are python -m server.cli serve)."""
    from server.config import load_config

    config = load_config(list(argv[4:]), environ={})
    return {
        "role": "server",
        "name": name,
        "argv": list(argv),
        "env_removed": list(removed_env),
        "config": jsonable(config),
    }


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["stamp"]:
        raise SystemExit("usage: python -m bench.provenance stamp")
    write_stamp()
