"""A real `livestyle serve` child process, watched from outside as an operator would:
/healthz (how long until the port answers, until it says ok, and the warm-up progress it
reports meanwhile), /metrics (histograms) and /proc (CPU time)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.provenance import REPO
from bench.stats import Buckets

POLL_S = 0.25
MAX_PROGRESS = 64
LOG_TAIL = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_argv(port: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # 503 unhealthy still answers with a body
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def _stat_cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file (no psutil needed)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """One thread of a process (the main thread: tid == pid)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))


def health_of(url: str) -> dict[str, Any] | None:
    """A server's /healthz body (503 unhealthy included), None when it does not answer."""
    got = _get(f"{url}/healthz")
    if got is None:
        return None
    try:
        body = json.loads(got[1])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class ServeProcess:
    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.url = f"http://127.0.0.1:{self.argv[self.argv.index('--port') + 1]}"
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self._t0 = time.monotonic()

    def health(self) -> dict[str, Any] | None:
        return health_of(self.url)

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Poll /healthz until it says ok: {"ready_s", "port_bound_s", "engine", "progress"},
        or {"error", ...} if the process exits, reports unhealthy or runs out of time."""
        assert self.proc is not None, "start() first"
        record: dict[str, Any] = {"progress": []}
        seen: tuple[Any, Any] | None = None
        while True:
            elapsed = time.monotonic() - self._t0
            health = self.health()
            if health is not None:
                record.setdefault("port_bound_s", round(elapsed, 2))
                state = (health.get("status"), health.get("progress"))
                if state != seen and len(record["progress"]) < MAX_PROGRESS:
                    seen = state
                    entry = {"t_s": round(elapsed, 2), "status": str(state[0])}
                    if state[1] is not None:
                        entry["progress"] = str(state[1])[:300]
                    record["progress"].append(entry)
                if health.get("status") == "ok":
                    record["ready_s"] = round(elapsed, 2)
                    record["engine"] = health.get("engine", {})
                    return record
                if health.get("status") == "unhealthy":
                    return {**record, "error": f"unhealthy after {elapsed:.0f} s: {health}"[:LOG_TAIL]}
            if self.proc.poll() is not None:
                return {**record, "error": f"exited with {self.proc.returncode}: {self.log_tail()}"}
            if elapsed > timeout_s:
                return {**record, "error": f"not ready after {timeout_s:.0f} s: {self.log_tail()}"}
            time.sleep(POLL_S)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def sessions(self) -> int | None:
        health = self.health()
        return None if health is None else int(health.get("sessions", 0))

    def histogram(self, name: str) -> tuple[Buckets, float] | None:
        """Cumulative buckets and sum of one histogram from /metrics (None if absent)."""
        got = _get(f"{self.url}/metrics")
        if got is None or got[0] != 200:
            return None
        for family in text_string_to_metric_families(got[1].decode()):
            if family.name != name:
                continue
            counts: dict[float, float] = {}  # summed over any other labels
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    counts[le] = counts.get(le, 0.0) + s.value
            total = sum(s.value for s in family.samples if s.name.endswith("_sum"))
            return sorted(counts.items()), total
        return None

    def cpu_seconds(self) -> float:
        """utime + stime of the server process."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def loop_cpu_seconds(self) -> float:
        """utime + stime of the server's main thread, which runs its asyncio event loop (all
        signaling, RTP/RTCP and data-channel work; the engine, decoders and encoders have
        threads of their own)."""
        assert self.proc is not None
        return thread_cpu_seconds(self.proc.pid, self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
