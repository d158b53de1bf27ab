"""The `livestyle` command: `livestyle serve [options]`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from pipeline.config import ConfigError
from server import tls
from server.config import (
    ServerConfig,
    StylizeConfig,
    load_bench_config,
    load_config,
    load_eval_config,
    load_stylize_config,
)

log = logging.getLogger("livestyle")

USAGE = """usage: livestyle <command> [options]

commands:
  serve     run the WebRTC stylization server (livestyle serve --help)
  stylize   stylize a video file: livestyle stylize IN.mp4 OUT.mp4 --prompt "..." (--help)
  eval      quality metrics of a stylized video: livestyle eval IN.mp4 STYLIZED.mp4 (--sweep: over settings)
  bench     benchmark the engine on this machine's GPU, write bench/results/*.json (--help)
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiortc/aioice log every packet-level event at INFO/DEBUG; keep them quiet.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen at once, before any slow start-up work (weights, compilation), so the
    port answers /healthz with warming_up instead of refusing connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if host == "::" and socket.has_dualstack_ipv6():
            return socket.create_server((host, port), family=family, dualstack_ipv6=True)
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        hint = "another program uses it; choose another --port (LIVESTYLE_PORT)"
        if exc.errno != errno.EADDRINUSE:
            hint = "check --host (LIVESTYLE_HOST): it must be an address of this machine, or 0.0.0.0 for all"
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None


def listening_lines(host: str, port: int, scheme: str) -> list[str]:
    """What the log says once the socket listens: the real address and the URLs to open."""
    if host in ("0.0.0.0", "::", ""):
        lines = [f"listening on all interfaces ({host or '0.0.0.0'}), port {port}"]
        lines.append(f"open {scheme}://localhost:{port} on this machine")
        others = [h for h in tls.default_hosts() if h not in ("localhost", "127.0.0.1", "::1")]
        for address in others:
            lines.append(f"open {scheme}://{address}:{port} from another device on the network")
        if others and scheme == "http":
            lines.append("(browsers only give the camera to https:// pages off localhost: --tls-self-signed)")
        return lines
    shown = f"[{host}]" if ":" in host else host
    return [f"listening on {shown}:{port}", f"open {scheme}://{shown}:{port}"]


def unreachable_warning(config: ServerConfig) -> str | None:
    """What to log at start when this server's own peer connections can reach no one (a
    server that places every session on its media processes has none)."""
    from signaling.ice import unreachable_reason

    # --ice-loopback: peers on this machine can connect through the 127.0.0.1 candidate.
    if config.cluster.place_on or config.ice_loopback or (why := unreachable_reason(config.ice_servers)) is None:
        return None
    return f"WebRTC sessions cannot connect: {why}"


def serve(config: ServerConfig) -> None:
    from server.app import create_app, engine_spec_of, server_options  # imports aiortc: only when serving

    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = tls.ssl_context(config.tls_cert, config.tls_key)
    elif config.tls_self_signed:
        hosts = tls.default_hosts()
        if config.host not in ("0.0.0.0", "::", *hosts):
            hosts.append(config.host)
        cert, key = tls.self_signed_certificate(config.tls_dir.expanduser(), hosts)
        log.info("HTTPS with the self-signed certificate %s (browsers will ask to accept it once)", cert)
        ssl_context = tls.ssl_context(cert, key)
    # Quick checks only (model reference, CUDA, cache, one Hub look-up): the download and the
    # weights load run in the engine's build, after the bind.
    spec = engine_spec_of(config)
    sock = _listen(config.host, config.port)
    bound_port = sock.getsockname()[1]
    for line in listening_lines(config.host, bound_port, "https" if ssl_context else "http"):
        log.info("%s", line)
    if config.ice_loopback:
        from signaling.ice import offer_loopback

        offer_loopback()  # for this process's life: the server's peer connections are made in it
        log.info("ICE: offering 127.0.0.1 as a host candidate too (--ice-loopback; peers on this machine only)")
    if (warning := unreachable_warning(config)) is not None:
        log.warning("%s", warning)  # else each offer just times out, with nothing in the log
    web.run_app(
        create_app(config, spec),
        sock=sock,
        ssl_context=ssl_context,
        loop=_new_loop(),
        print=None,
        access_log=None,
        shutdown_timeout=5,
        **server_options(config),
    )


def stylize(config: StylizeConfig) -> None:
    from tqdm import tqdm

    from pipeline.engines import resolve_engine
    from pipeline.video_file import probe_video, stylize_file

    try:
        frames = probe_video(config.input)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spec = resolve_engine(config.engine)
    log.info(
        "stylizing %s -> %s with the %s engine (%s)", config.input, config.output, spec.info.kind, spec.info.reason
    )
    with tqdm(total=frames, unit="frame", desc="stylize", dynamic_ncols=True) as bar:

        def total(n: int | None) -> None:
            bar.total = n
            bar.refresh()

        try:
            result = stylize_file(
                spec,
                config.input,
                config.output,
                config.prompt,
                on_progress=lambda n: bar.update(n - bar.n),
                total_hint=total,
            )
        except KeyboardInterrupt:
            bar.close()
            log.warning("interrupted: %s was not written (the partial output was removed)", config.output)
            raise
    log.info(
        "wrote %d frames to %s in %.1f s (%.1f fps)%s",
        result.frames,
        config.output,
        result.seconds,
        result.fps,
        ", audio copied" if result.audio else "",
    )


def bench(config: Any) -> None:
    from bench.harness import format_table, run_bench

    report, path = run_bench(config, progress=lambda msg: log.info("bench: %s", msg))
    print(format_table(report))
    log.info("results written to %s", path)


def evaluate(config: Any) -> None:
    from evaluation.run import run

    print(run(config))


COMMANDS: dict[str, tuple[Callable[[list[str]], Any], Callable[[Any], None]]] = {
    "serve": (load_config, serve),
    "stylize": (load_stylize_config, stylize),
    "bench": (load_bench_config, bench),
    "eval": (load_eval_config, evaluate),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"livestyle: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    load, run = COMMANDS[command]
    try:
        config = load(rest)
    except ConfigError as exc:
        print(f"livestyle: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    try:
        run(config)
    except ConfigError as exc:  # an argument refused once what it names was looked at
        log.error("%s", exc)
        return 2
    except (RuntimeError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
