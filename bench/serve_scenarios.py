"""The scenarios that measure real `livestyle serve` processes from outside: warm-up (the
first start of a server configuration, then a second start of the same configuration in
a new process, reusing the on-disk compile cache; time until /healthz says ok) and the
WebRTC load runs against the first server."""

from __future__ import annotations

import os
from typing import Any

from bench.harness import RUN_OVERHEAD_S, BenchConfig
from bench.provenance import server_env, server_record
from bench.run import BUDGET, ResultsFile, RunClock
from bench.serve_process import ServeProcess, free_port, serve_argv
from bench.webrtc_load import WebrtcRun
from server.config import switch_argv
from signaling.ice import unreachable_reason


def serve_args(config: BenchConfig) -> list[str]:
    """The server's options: the production layout of the engine (every bucket up to the
    largest) unless --serve-buckets says otherwise, no per-address offer limit, this run's
    speed switches, plus --serve-arg extras."""
    # Every client of a run connects from this machine's one address: the per-address offer
    # limit (a real server's defence against one client opening sessions in a loop) would
    # refuse the 11th offer of a run, so the measured server has it off.
    args = ["--max-sessions", str(max(config.webrtc_clients)), "--offer-rate", "0"]
    if config.webrtc_engine == "preview":
        args += ["--engine", "preview"]
    else:
        buckets = config.serve_buckets
        args += ["--engine", "diffusion", "--model", config.model, "--device", config.device]
        args += ["--max-batch", str(max(buckets)), "--buckets", ",".join(map(str, buckets))]
        args += ["--compile", config.compile, *switch_argv(config.switches)]
    return args + list(config.serve_args)


def media_args(config: BenchConfig, socket_path: str) -> list[str]:
    """A media process's options: no engine of its own, the engine server's socket, and
    its share of the clients (round robin) as its session limit."""
    share = -(-max(config.webrtc_clients) // config.media_processes)
    return ["--engine-socket", socket_path, "--max-sessions", str(share), "--offer-rate", "0"]


class ServeScenarios:
    def __init__(self, config: BenchConfig, out: ResultsFile, clock: RunClock) -> None:
        self.config = config
        self.out = out
        self.clock = clock
        self.env, self.removed_env = server_env()
        args = serve_args(config)
        self.loopback = "webrtc" in config.scenarios and unreachable_reason() is not None
        """No address but 127.0.0.1 here (a bare container): every peer of the run is on this
        machine, so servers, media processes and clients all offer 127.0.0.1 as a candidate."""
        if self.loopback:
            args.append("--ice-loopback")
        # A short path: Unix socket paths hold at most 107 bytes.
        self.socket_path = f"/tmp/livestyle-bench-{os.getpid()}.sock"
        if config.media_processes and "webrtc" in config.scenarios:
            args += ["--engine-host", self.socket_path]
        self.argv = serve_argv(free_port(), args)
        self.starts = 0

    def start(self, name: str) -> tuple[ServeProcess, dict[str, Any]]:
        self.starts += 1
        self.out.processes.append(server_record(name, self.argv, self.removed_env))
        log = self.out.path.with_name(f"{self.out.path.stem}-server-{self.starts}.log")
        server = ServeProcess(self.argv, self.env, log)
        left = self.clock.left_s()
        timeout = self.config.serve_timeout_s if left is None else min(self.config.serve_timeout_s, max(60.0, left))
        server.start()
        record = server.wait_ready(timeout)
        self.clock(f"{name}: " + (f"ready after {record['ready_s']} s" if "ready_s" in record else record["error"]))
        return server, record

    def run(self) -> None:
        """First start, then (warmup) a second start in a new process; the WebRTC runs go
        to the last server started, so the warm-up numbers are in before them."""
        c = self.config
        warmup, webrtc = "warmup" in c.scenarios, "webrtc" in c.scenarios
        self.clock.begin("serve:first", required=True)
        server: ServeProcess | None
        server, record = self.start("first start" if warmup else "webrtc server")
        try:
            if warmup:
                buckets = [] if c.webrtc_engine == "preview" else list(c.serve_buckets)
                self.out.scenarios["warmup"] = {"engine": c.webrtc_engine, "buckets": buckets, "first": record}
                self.out.save()
                server.stop()
                server = None
                if not self.clock.begin("serve:second"):
                    self.out.skip("warmup second start", BUDGET)
                    record = {"error": "no second start"}
                else:
                    server, record = self.start("second start")
                    self.out.scenarios["warmup"]["second"] = record
                    self.out.save()
            if webrtc:
                if server is None or "ready_s" not in record:
                    self.out.skip("webrtc", f"no server to measure: {record['error'][:300]}")
                elif not self.clock.begin("webrtc"):
                    self.out.skip("webrtc", BUDGET)
                else:
                    self.webrtc(server)
        finally:
            if server is not None:
                server.stop()

    def webrtc(self, server: ServeProcess) -> None:
        c = self.config
        section: dict[str, Any] = {"engine": c.webrtc_engine, "server": self.out.processes[-1]["name"]}
        self.out.scenarios["webrtc"] = section

        def fits(codec: str, clients: int) -> bool:
            left = self.clock.left_s()
            if left is None or left > c.webrtc_seconds + RUN_OVERHEAD_S:
                return True
            self.out.skip(f"webrtc {codec} x{clients}", BUDGET)
            return False

        clip = c.davis_dir / f"{c.clips[0]}.mp4"
        media = self.start_media()
        try:
            if len(media) < c.media_processes:
                self.out.skip("webrtc", "a media process did not start (its log is next to the results file)")
                return
            if media:
                section["media_processes"] = len(media)
            run = WebrtcRun(server, clip, c.webrtc_seconds, self.out.processes, self.clock, media, self.loopback)
            run.fill(section, c.webrtc_clients, c.webrtc_codecs, fits, self.out.save)
        finally:
            for proc in media:
                proc.stop()

    def start_media(self) -> list[ServeProcess]:
        """The media processes (none unless --media-processes), ready; fewer if one failed."""
        media: list[ServeProcess] = []
        for i in range(self.config.media_processes):
            extra = ["--ice-loopback"] if self.loopback else []
            argv = serve_argv(free_port(), media_args(self.config, self.socket_path) + extra)
            self.out.processes.append(server_record(f"media process {i + 1}", argv, self.removed_env))
            log = self.out.path.with_name(f"{self.out.path.stem}-media-{i + 1}.log")
            proc = ServeProcess(argv, self.env, log)
            proc.start()
            record = proc.wait_ready(60)
            self.clock(
                f"media process {i + 1}: "
                + (f"ready after {record['ready_s']} s" if "ready_s" in record else record["error"])
            )
            if "ready_s" not in record:
                proc.stop()
                break
            media.append(proc)
        return media
