"""The `livestyle` command: `livestyle serve [options]`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from pipeline.config import ConfigError
from server import tls
from server.config import ServerConfig, StylizeConfig, load_bench_config, load_config, load_stylize_config

log = logging.getLogger("livestyle")

USAGE = """usage: livestyle <command> [options]

commands:
  serve     run the WebRTC stylization server (livestyle serve --help)
  stylize   stylize a video file: livestyle stylize IN.mp4 OUT.mp4 --prompt "..." (--help)
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


def serve(config: ServerConfig) -> None:
    from server.app import create_app, server_options  # imports aiortc: only when serving

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
    app = create_app(config)
    scheme = "https" if ssl_context else "http"
    shown = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    log.info("livestyle listening on %s://%s:%d", scheme, shown, config.port)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
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
    from pipeline.video_file import stylize_file

    spec = resolve_engine(config.engine)
    log.info(
        "stylizing %s -> %s with the %s engine (%s)", config.input, config.output, spec.info.kind, spec.info.reason
    )
    with tqdm(unit="frame", desc="stylize", dynamic_ncols=True) as bar:

        def total(n: int | None) -> None:
            bar.total = n
            bar.refresh()

        result = stylize_file(
            spec,
            config.input,
            config.output,
            config.prompt,
            on_progress=lambda n: bar.update(n - bar.n),
            total_hint=total,
        )
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


COMMANDS: dict[str, tuple[Callable[[list[str]], Any], Callable[[Any], None]]] = {
    "serve": (load_config, serve),
    "stylize": (load_stylize_config, stylize),
    "bench": (load_bench_config, bench),
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
    except (ConfigError, RuntimeError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
