"""The scenarios that measure real `livestyle serve` processes from outside: warm-up (the
first start of a server configuration, then a second start of the same configuration in
a new process, reusing the on-disk compile cache; time until /healthz says ok) and the
WebRTC load runs against the first server."""

from __future__ import annotations

from typing import Any

from bench.harness import RUN_OVERHEAD_S, BenchConfig
from bench.provenance import server_env, server_record
from bench.run import BUDGET, ResultsFile, RunClock
from bench.serve_process import ServeProcess, free_port, serve_argv
from bench.webrtc_load import WebrtcRun
from server.config import switch_argv


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


class ServeScenarios:
    def __init__(self, config: BenchConfig, out: ResultsFile, clock: RunClock) -> None:
        self.config = config
        self.out = out
        self.clock = clock
        self.env, self.removed_env = server_env()
        self.argv = serve_argv(free_port(), serve_args(config))
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
        warmup = "warmup" in c.scenarios
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
            if "webrtc" in c.scenarios:
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
        run = WebrtcRun(server, clip, c.webrtc_seconds, self.out.processes, self.clock)
        run.fill(section, c.webrtc_clients, c.webrtc_codecs, fits, self.out.save)
