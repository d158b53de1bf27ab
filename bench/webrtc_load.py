"""The WebRTC path under load: a real `livestyle serve` process and N aiortc clients (one
process each, so the clients' own encode/decode does not share a GIL) sending a DAVIS
clip at 30 fps over loopback. Per run: delivered fps per client, end-to-end latency by pts
(client send -> client receive of the same frame, anchored without pixels: see
bench/loopback.py), the engine-internal latency of the same frames (the change of the
server's /metrics frame-latency histogram over the run), so the transport's share shows,
and the server process's CPU use.

    python -m bench.webrtc_load client --url http://127.0.0.1:8080 --clip X.mp4 --codec VP8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from bench.loopback import ClipTrack, LoopbackClient, match_frames, ping_pong, read_clip
from bench.provenance import REPO
from bench.serve_process import ServeProcess
from bench.stats import Buckets, histogram_block, histogram_delta, latency_block, no_samples

FPS = 30
SETTLE_S = 1.0  # after the stream starts, before the measured window
DRAIN_S = 15.0  # at most, after the window, for its last frames to arrive
ENGINE_LATENCY = "livestyle_frame_latency_ms"
ENGINE_STEP = "livestyle_engine_step_ms"
ENGINE_BATCH = "livestyle_engine_batch_size"
MAX_ERRORS = 4


async def _client(url: str, clip: Path, codec: str, seconds: float) -> dict[str, Any]:
    track = ClipTrack(ping_pong(read_clip(clip)), fps=FPS, anchored=True)
    async with ClientSession() as http:
        client = LoopbackClient(url, track)
        try:
            await client.connect(http, codec=codec)
            probes = await client.anchor()
            await asyncio.sleep(SETTLE_S + seconds)
            assert track.stream_start is not None
            start = track.stream_start + SETTLE_S
            await _drain(track, client, start + seconds)
        finally:
            await client.close()
    matching = match_frames(track, client.received)
    window = [m for m in matching.matches if start <= m.sent < start + seconds]
    return {
        "ok": True,
        "fps": round(len(window) / seconds, 2),
        "latencies_ms": [round(m.latency_ms, 2) for m in window],
        "probes": probes,
        "method": matching.method,
        "received": len(client.received),
        "matched": len(matching.matches),
        "stamps_read": matching.stamps_read,
        "stamps_agree": matching.stamps_agree,
    }


async def _drain(track: ClipTrack, client: LoopbackClient, end: float) -> None:
    """Wait until a frame sent after the window comes back (frames come back in the order
    they were sent, so no frame of the window is still on its way), at most DRAIN_S."""
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        if any(m.sent >= end for m in match_frames(track, client.received[-8:]).matches):
            return
        await asyncio.sleep(0.1)


def client_argv(url: str, clip: Path, codec: str, seconds: float, loopback: bool = False) -> list[str]:
    """One load client process (`python -m bench.webrtc_load client ...`); `loopback`: it
    offers 127.0.0.1 as an ICE candidate too (signaling.ice.offer_loopback)."""
    argv = [sys.executable, "-m", "bench.webrtc_load", "client", "--url", url, "--clip", str(clip)]
    return [*argv, "--codec", codec, "--seconds", str(seconds), *(["--ice-loopback"] if loopback else [])]


def start_clients(argv: list[str], n: int) -> list[subprocess.Popen[str]]:
    return start_client_list([argv] * n)


def start_client_list(argvs: list[list[str]]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs
    ]


def collect_client(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """A client's printed result, or {"ok": False, "error": ...}."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"ok": False, "error": f"client did not finish within {timeout:.0f} s"}
    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": f"client exited with {proc.returncode}: {err[-300:]}"}
    return result if isinstance(result, dict) else {"ok": False, "error": "client printed no JSON object"}


class WebrtcRun:
    """Load runs against one server: N client processes per run, the server's CPU time and
    /metrics histogram read before and after."""

    def __init__(
        self,
        server: ServeProcess,
        clip: Path,
        seconds: float,
        processes: list[dict[str, Any]],
        progress: Callable[[str], None],
        media: Sequence[ServeProcess] = (),
        loopback: bool = False,
    ) -> None:
        """media: processes without an engine that take the clients (round robin) and feed
        `server`'s engine; none = the clients connect to `server`. loopback: the clients
        offer 127.0.0.1 as an ICE candidate (the servers were started with --ice-loopback)."""
        self.loopback = loopback
        self.server = server
        self.media = list(media)
        self.clip = clip
        self.seconds = seconds
        self.processes = processes
        self.progress = progress

    def fill(
        self,
        section: dict[str, Any],
        counts: tuple[int, ...],
        codecs: tuple[str, ...],
        fits: Callable[[str, int], bool],
        save: Callable[[], Any],
    ) -> None:
        """Every (codec, count) run that `fits`, into section["rows"], saving after each."""
        section.update({"fed_fps": FPS, "seconds": self.seconds, "settle_s": SETTLE_S, "rows": []})
        for codec in codecs:
            for n in counts:
                if not fits(codec, n):
                    continue
                self.progress(f"webrtc: {n} client(s), {codec}, {self.seconds:.0f} s")
                section["rows"].append(self.one(codec, n))
                save()
                for _ in range(40):  # sessions close when the clients hang up
                    if all(p.sessions() == 0 for p in (self.server, *self.media)):
                        break
                    time.sleep(0.25)

    def one(self, codec: str, n: int) -> dict[str, Any]:
        server, targets = self.server, self.media or [self.server]
        argvs = [
            client_argv(targets[i % len(targets)].url, self.clip, codec, self.seconds, self.loopback) for i in range(n)
        ]
        for i in range(min(n, len(targets))):
            count = len(range(i, n, len(targets)))
            name = f"webrtc {codec} x{n}" + (f" -> media process {i + 1}" if self.media else "")
            self.processes.append({"role": "client", "name": name, "argv": argvs[i], "count": count})
        hists0 = {name: server.histogram(name) for name in (ENGINE_LATENCY, ENGINE_STEP, ENGINE_BATCH)}
        every = [server, *self.media]
        cpu0, t0 = sum(p.cpu_seconds() for p in every), time.monotonic()
        loops0 = [p.loop_cpu_seconds() for p in every]
        procs = start_client_list(argvs)
        clients = [collect_client(p, self.seconds + 120) for p in procs]
        elapsed = time.monotonic() - t0
        cores = (sum(p.cpu_seconds() for p in every) - cpu0) / elapsed
        loops = [(p.loop_cpu_seconds() - l0) / elapsed for p, l0 in zip(every, loops0, strict=True)]
        loop_cores = loops[0]
        deltas = {name: _delta(h0, server.histogram(name)) for name, h0 in hists0.items()}
        row = _client_columns(codec, n, clients)
        row["engine"] = _block(deltas[ENGINE_LATENCY], ENGINE_LATENCY, "the engine made no frames")
        if row["e2e"]["count"] and row["engine"]["count"]:
            row["transport_mean_ms"] = round(row["e2e"]["mean_ms"] - row["engine"]["mean_ms"], 2)
        row["server_cpu_cores"] = round(cores, 2)
        # Where a server falls behind: its event loop (one core at most), or steps that
        # take longer than the GPU needs, or batches smaller than the sessions.
        row["server_loop_cores"] = round(loop_cores, 2)
        if self.media:  # server_cpu_cores is then the sum over the engine's and these processes
            row["media_loop_cores"] = [round(c, 2) for c in loops[1:]]
        row["engine_step"] = _block(deltas[ENGINE_STEP], ENGINE_STEP, "the engine made no steps")
        batches = deltas[ENGINE_BATCH]
        if batches is not None and batches[0] and batches[0][-1][1]:
            row["batch_mean"] = round(batches[1] / batches[0][-1][1], 2)
        return row


def _delta(before: tuple[Buckets, float] | None, after: tuple[Buckets, float] | None) -> tuple[Buckets, float] | None:
    """A histogram's observations over a run; None when the server does not export it."""
    return None if before is None or after is None else histogram_delta(before, after)


def _block(delta: tuple[Buckets, float] | None, name: str, empty_reason: str) -> dict[str, Any]:
    if delta is None:
        return no_samples(f"the server's /metrics has no {name} histogram")
    return histogram_block(*delta, empty_reason)


def _client_columns(codec: str, n: int, clients: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [c for c in clients if c.get("ok")]
    row: dict[str, Any] = {"codec": codec, "clients": n, "completed": len(ok)}
    errors = [str(c.get("error"))[:300] for c in clients if not c.get("ok")]
    if errors:
        row["errors"] = errors[:MAX_ERRORS]
    if ok:
        fps = [c["fps"] for c in ok]
        row["delivered_fps_min"] = min(fps)
        row["delivered_fps_mean"] = round(statistics.mean(fps), 2)
        medians = [statistics.median(c["latencies_ms"]) for c in ok if c["latencies_ms"]]
        row["e2e_client_p50_ms"] = sorted(round(m, 2) for m in medians)
    row["e2e"] = latency_block([v for c in ok for v in c["latencies_ms"]], "no received frame matched a sent one")
    row["anchor"] = {
        "probes_max": max((c["probes"] for c in ok), default=0),
        "received": sum(c["received"] for c in ok),
        "matched": sum(c["matched"] for c in ok),
    }
    row["stamps"] = {"read": sum(c["stamps_read"] for c in ok), "agree": sum(c["stamps_agree"] for c in ok)}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="one load client; prints a JSON line")
    c.add_argument("--url", required=True)
    c.add_argument("--clip", type=Path, required=True)
    c.add_argument("--codec", default="VP8")
    c.add_argument("--seconds", type=float, default=8.0)
    c.add_argument("--ice-loopback", action="store_true", help="offer 127.0.0.1 as an ICE candidate too")
    args = p.parse_args()
    if args.ice_loopback:
        from signaling.ice import offer_loopback

        offer_loopback()  # for this client process's life
    try:
        result = asyncio.run(_client(args.url, args.clip, args.codec, args.seconds))
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which records it
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
