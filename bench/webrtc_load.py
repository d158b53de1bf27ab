"""The WebRTC path under load: a real `livestyle serve` process, N aiortc clients (one
process each, so the clients' own encode/decode does not share a GIL) sending a DAVIS
clip at 30 fps. Per run: delivered fps and send->receive latency by pts per client, and
the server process's CPU use (the CPU encode limit of one media process).

    python -m bench.webrtc_load client --url http://127.0.0.1:8080 --clip X.mp4 --codec VP8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientSession

from bench.loopback import ClipTrack, LoopbackClient, ping_pong, pts_latencies, read_clip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(url: str, clip: Path, codec: str, seconds: float) -> dict[str, Any]:
    track = ClipTrack(ping_pong(read_clip(clip)), fps=30)
    async with ClientSession() as http:
        client = LoopbackClient(url, track)
        await client.connect(http, codec=codec)
        await client.wait_frames(3, timeout=60)
        n0, t0 = len(client.received), time.monotonic()
        await asyncio.sleep(seconds)
        fps = (len(client.received) - n0) / (time.monotonic() - t0)
        await client.close()
    latencies, stamped = pts_latencies(track, client.received)
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"),) * 2
    return {
        "fps": round(fps, 1),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "received": len(client.received),
        "stamped": stamped,
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def run_webrtc(
    serve_args: Sequence[str],
    clip: Path,
    counts: Sequence[int],
    codecs: Sequence[str],
    seconds: float,
    log_path: Path,
    progress: Callable[[str], None] = print,
    startup_timeout: float = 900,
) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-sessions",
        str(max(counts)),
        *serve_args,
    ]
    rows: list[dict[str, Any]] = []
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_timeout
            while (h := _health(url)) is None or h["status"] != "ok":
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not become healthy (see {log_path}): {h}")
                time.sleep(1)
            progress(f"webrtc: server up ({h['engine']['kind']}), port {port}")
            for codec in codecs:
                for n in counts:
                    progress(f"webrtc: {n} client(s), {codec}, {seconds:.0f} s")
                    cpu0, t0 = _cpu_seconds(server.pid), time.monotonic()
                    procs = [
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "bench.webrtc_load",
                                "client",
                                "--url",
                                url,
                                "--clip",
                                str(clip),
                                "--codec",
                                codec,
                                "--seconds",
                                str(seconds),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL,
                            text=True,
                        )
                        for _ in range(n)
                    ]
                    outs = [p.communicate(timeout=seconds + 120)[0] for p in procs]
                    wall = time.monotonic() - t0
                    cores = (_cpu_seconds(server.pid) - cpu0) / wall
                    clients = [json.loads(o.strip().splitlines()[-1]) for o in outs if o.strip()]
                    fps = [c["fps"] for c in clients]
                    rows.append(
                        {
                            "codec": codec,
                            "clients": n,
                            "completed": len(clients),
                            "delivered_fps_min": min(fps) if fps else 0.0,
                            "delivered_fps_mean": round(statistics.mean(fps), 1) if fps else 0.0,
                            "p50_ms": round(statistics.median(c["p50_ms"] for c in clients), 1) if clients else None,
                            "p95_ms": round(max(c["p95_ms"] for c in clients), 1) if clients else None,
                            "server_cpu_cores": round(cores, 2),
                        }
                    )
                    for _ in range(30):  # sessions close when the clients hang up
                        if (_health(url) or {}).get("sessions", 1) == 0:
                            break
                        time.sleep(0.5)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="one load client; prints a JSON line")
    c.add_argument("--url", required=True)
    c.add_argument("--clip", type=Path, required=True)
    c.add_argument("--codec", default="VP8")
    c.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    print(json.dumps(asyncio.run(_client(args.url, args.clip, args.codec, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
