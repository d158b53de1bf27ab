"""The `livestyle` command: `livestyle serve [options]`."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web

from pipeline.config import ConfigError
from server.config import ServerConfig, load_config

log = logging.getLogger("livestyle")

USAGE = """usage: livestyle <command> [options]

commands:
  serve     run the WebRTC stylization server (livestyle serve --help)
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
    from server.app import create_app  # imports aiortc: only when serving

    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
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
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command != "serve":
        print(f"livestyle: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    try:
        config = load_config(rest)
    except ConfigError as exc:
        print(f"livestyle: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    try:
        serve(config)
    except (ConfigError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
