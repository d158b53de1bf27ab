"""FakeHub: a local stand-in for the Hugging Face Hub (HF_ENDPOINT) serving one folder as one
repository at one revision, over the same HTTP API huggingface_hub's snapshot_download uses
(repo info, tree listing, HEAD + GET of /resolve/ files). A download can be held at one file,
so a test can look at the server while its weights are still on the way."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, folder: Path, repo: str, revision: str) -> None:
        self.folder, self.repo, self.revision = folder, repo, revision
        self.files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.downloads: list[str] = []
        self.url = ""
        self._held: str | None = None
        self._release = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-hub", daemon=True)

    # ---- control (from the test's thread) -----------------------------------------------

    def start(self) -> FakeHub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def hold(self, path: str) -> None:
        """GET of `path` trickles until release() (HEAD and the listings still answer)."""
        self._held = path
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- the HTTP side ------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application()
        base = f"/api/models/{self.repo}"
        app.router.add_get(f"{base}/revision/{{rev}}", self._info)
        app.router.add_get(f"{base}/tree/{{rev}}", self._tree)
        app.router.add_get(f"{base}/tree/{{rev}}/{{path:.*}}", self._tree)
        app.router.add_route("*", f"/{self.repo}/resolve/{{rev}}/{{path:.*}}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def _known(self, rev: str) -> None:
        if rev not in (self.revision, COMMIT):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"}, text="revision not found")

    def _entry(self, path: str) -> dict:
        data = (self.folder / path).read_bytes()
        return {
            "type": "file",
            "path": path,
            "size": len(data),
            "oid": hashlib.sha1(data).hexdigest(),
            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
        }

    async def _info(self, request: web.Request) -> web.Response:
        self._known(request.match_info["rev"])
        siblings = [{"rfilename": e["path"], "size": e["size"]} for e in map(self._entry, self.files)]
        return web.json_response({"id": self.repo, "modelId": self.repo, "sha": COMMIT, "siblings": siblings})

    async def _tree(self, request: web.Request) -> web.Response:
        self._known(request.match_info["rev"])
        prefix = request.match_info.get("path", "")
        return web.json_response([self._entry(p) for p in self.files if p.startswith(prefix)])

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._known(request.match_info["rev"])
        path = request.match_info["path"]
        if path not in self.files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"}, text="entry not found")
        data = (self.folder / path).read_bytes()
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Length": str(len(data)),
        }
        if request.method == "HEAD":
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent = 0
        try:
            if path == self._held:
                # A slow download, not a stalled one (clients time out on silence): a quarter
                # at once, then a byte every half second until release().
                sent = len(data) // 4
                await response.write(data[:sent])
                while not self._release.is_set() and sent < len(data) - 1:
                    await asyncio.sleep(0.5)
                    await response.write(data[sent : sent + 1])
                    sent += 1
            await response.write(data[sent:])
            await response.write_eof()
        except ConnectionResetError:  # the client went away (a test stopped its server)
            return response
        self.downloads.append(path)
        return response
