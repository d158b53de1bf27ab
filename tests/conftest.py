import sys
from pathlib import Path

import pytest

# Test helper modules (fakes.py, media.py) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp.test_utils import TestServer

from pipeline.config import EngineConfig
from server.app import create_app
from server.config import ServerConfig


@pytest.fixture
async def preview_server():
    """Factory for in-process servers with the preview engine: `srv, base = await start(**config)`."""
    servers = []

    async def start(**config):
        srv = TestServer(create_app(ServerConfig(port=0, engine=EngineConfig(kind="preview"), **config)))
        await srv.start_server()
        servers.append(srv)
        return srv, str(srv.make_url("")).rstrip("/")

    yield start
    for srv in servers:
        await srv.close()
