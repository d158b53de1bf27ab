"""How much of a real server's time holds the GIL, per thread, while N aiortc clients
stream through it (the question behind the 16-session WebRTC collapse: one Python process
can run at most one core of GIL-holding work, shared by its event loop, the engine's
thread and every decoder and encoder thread).

    python -m bench.gil_profile [--clients 1,2] [--codec VP8] [--seconds 10] [--media-process] [--out FILE]

Starts `livestyle serve` (preview engine unless --serve-arg says otherwise), N clients of
bench.webrtc_load for each count, and samples the server with py-spy (`--gil`: a sample
only while some thread holds the GIL) over the middle of the run. Writes one JSON file:
per run the GIL-held share of wall time, split by thread role, the frames the clients
received, and the GIL-held milliseconds per delivered frame; plus the commit, argv and
machine. With --media-process the clients connect to a second server that runs no engine
(`--engine-socket`) and feeds the first one's (`--engine-host`), and both processes are
sampled at once: each run then holds these figures per process. py-spy must be installed
(`pip install py-spy`) and may attach to children (it needs ptrace; containers may need
CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.provenance import REPO, git_state, host_info
from bench.serve_process import ServeProcess, free_port, serve_argv
from bench.webrtc_load import client_argv, collect_client, start_clients

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
RATE_HZ = 200
TOP_FUNCTIONS = 24
TRUNK_SHARE = 0.9
"""A function in at least this share of the event loop's samples is its trunk, not work."""
"""py-spy samples per second."""
THREAD_ROLES = (
    ("MainThread", "event loop"),  # aiohttp, aiortc's RTP/RTCP, data channels, signaling
    ("uvloop", "event loop"),
    ("engine-", "engine"),  # pipeline/supervisor.py names each build's thread
    ("livestyle-reader", "frames in"),  # decoded frame -> engine input (signaling/tracks.py)
    ("livestyle-fanout", "frames out"),  # stylized array -> video frames for the encoders
)
"""Thread role by name prefix; unnamed pool threads are told apart by their stack."""
STACK_ROLES = (
    ("decode", ("decoder_worker", "aiortc/codecs/vpx.py", "aiortc/codecs/h264.py", "rtcrtpreceiver.py")),
    ("encode", ("signaling/encoders.py", "rtcrtpsender.py")),
)
THREAD = re.compile(r"^thread \((?P<tid>0x[0-9a-f]+|\d+)\): (?P<name>[^;]*)")


def role_of(name: str, stack: str) -> str:
    for prefix, role in THREAD_ROLES:
        if name.startswith(prefix):
            return role
    for role, markers in STACK_ROLES:
        if any(m in stack for m in markers):
            return role
    return "other"


def parse_raw(text: str) -> dict[str, Counter[str]]:
    """py-spy's raw (collapsed) output -> samples per role, per thread, and per function
    of the event loop's stacks (inclusive: a sample counts for every function on its
    stack once)."""
    by_role: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    loop_functions: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        match = THREAD.match(stack)
        name = match.group("name") if match else "?"
        role = role_of(name, stack)
        by_role[role] += int(count)
        by_thread[name] += int(count)
        if role == "event loop":
            for function in set(_function(f) for f in stack.split(";")[1:]):
                loop_functions[function] += int(count)
    return {"role": by_role, "thread": by_thread, "loop_functions": loop_functions}


def _function(frame: str) -> str:
    """'name (path/file.py:123)' -> 'name (path/file.py)': lines of one function merge."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def sample(pids: dict[str, int], seconds: float, work: Path) -> dict[str, dict[str, Counter[str]]]:
    """py-spy on every process at once, over the same window."""
    spies = {}
    for name, pid in pids.items():
        argv = [PY_SPY, "record", "--gil", "--threads", "-r", str(RATE_HZ), "-d", str(int(seconds))]
        argv += ["-p", str(pid), "-f", "raw", "-o", str(work / f"{name}.txt")]
        spies[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for name, spy in spies.items():
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode:
            raise RuntimeError(f"py-spy on the {name} process failed: {err.decode(errors='replace')[-500:]}")
    return {name: parse_raw((work / f"{name}.txt").read_text()) for name in pids}


def one_run(
    servers: dict[str, ServeProcess], clip: Path, codec: str, clients: int, seconds: float, work: Path
) -> dict[str, Any]:
    """servers: the processes to sample by name; the clients connect to the last one."""
    target = list(servers.values())[-1]
    procs = start_clients(client_argv(target.url, clip, codec, seconds), clients)
    time.sleep(min(4.0, seconds / 3))  # connected and streaming
    window = max(2.0, seconds / 2)
    pids = {name: s.proc.pid for name, s in servers.items() if s.proc is not None}
    (run_dir := work / f"{codec}-{clients}").mkdir(exist_ok=True)
    samples = sample(pids, window, run_dir)
    ok = [r for r in (collect_client(p, seconds + 120) for p in procs) if r.get("ok")]
    fps = sum(r["fps"] for r in ok)
    run: dict[str, Any] = {
        "codec": codec,
        "clients": clients,
        "completed": len(ok),
        "delivered_fps_total": round(fps, 2),
        "window_s": window,
    }
    if len(samples) == 1:
        return {**run, **_held(next(iter(samples.values())), window, fps)}
    return {**run, "processes": {name: _held(s, window, fps) for name, s in samples.items()}}


def _held(samples: dict[str, Counter[str]], window: float, fps: float) -> dict[str, Any]:
    held = sum(samples["role"].values()) / (RATE_HZ * window)
    loop = samples["role"]["event loop"]
    return {
        "gil_held_share": round(held, 3),
        "gil_held_share_by_role": {k: round(v / (RATE_HZ * window), 3) for k, v in samples["role"].most_common()},
        "gil_held_ms_per_frame": round(1000 * held / fps, 2) if fps else None,
        "busiest_threads": {k: round(v / (RATE_HZ * window), 3) for k, v in samples["thread"].most_common(8)},
        # Share of the event loop's GIL-held samples per function, leaving out the trunk
        # (runpy, the CLI, aiohttp's run_app: in nearly every sample).
        "event_loop_functions": {
            k: round(v / loop, 3)
            for k, v in samples["loop_functions"].most_common(TOP_FUNCTIONS + 12)
            if v < TRUNK_SHARE * loop
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gil_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,2", help="client counts, one run each")
    p.add_argument("--codec", default="VP8", choices=("VP8", "H264"))
    p.add_argument("--seconds", type=float, default=10.0, help="each client's streaming time")
    p.add_argument("--clip", type=Path, default=REPO.parent / "shared" / "data" / "davis" / "blackswan.mp4")
    p.add_argument("--serve-arg", action="append", default=[], help="extra server option (default: preview engine)")
    p.add_argument(
        "--media-process",
        action="store_true",
        help="clients go to a second server without an engine that feeds the first one's (both sampled)",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profiles" / "gil-profile.json")
    args = p.parse_args(argv)
    if not Path(PY_SPY).is_file():
        p.error("py-spy is not installed (next to this Python or on PATH): pip install py-spy")
    counts = [int(x) for x in args.clients.split(",") if x.strip()]
    if not counts or any(not 1 <= n <= 16 for n in counts) or args.seconds <= 0:
        p.error(
            f"--clients takes counts of 1..16 and --seconds a positive number, got {args.clients!r}, {args.seconds}"
        )
    serve_extra = args.serve_arg or ["--engine", "preview"]
    limits = ["--max-sessions", str(max(counts)), "--offer-rate", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        socket_path = str(work / "engine.sock")
        if args.media_process:
            server_argv = serve_argv(free_port(), [*limits, *serve_extra, "--engine-host", socket_path])
            media_argv = serve_argv(free_port(), [*limits, "--engine-socket", socket_path])
            argvs = {"engine process": server_argv, "media process": media_argv}
        else:
            server_argv = serve_argv(free_port(), [*limits, *serve_extra])
            argvs = {"server": server_argv}
        servers = {name: ServeProcess(a, dict(os.environ), work / f"{name}.log") for name, a in argvs.items()}
        try:
            for server in servers.values():
                server.start()
            for name, server in servers.items():
                ready = server.wait_ready(300)
                if "error" in ready:
                    print(f"{name} did not start: {ready['error']}", file=sys.stderr)
                    return 1
            runs = [one_run(servers, args.clip, args.codec, n, args.seconds, work) for n in counts]
        finally:
            for server in servers.values():
                server.stop()
    report = {
        "command": ["python", "-m", "bench.gil_profile", *(argv if argv is not None else sys.argv[1:])],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": host_info(),
        "server_argv": server_argv,
        **({"media_argv": argvs["media process"]} if args.media_process else {}),
        "sample_rate_hz": RATE_HZ,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for r in runs:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
