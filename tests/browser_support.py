"""Helpers for the headless-Chromium end-to-end tests: the real `livestyle serve` as a
subprocess, a fake-camera file made from a DAVIS clip, and pixels read back from the page."""

from __future__ import annotations

import base64
import json
import math
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright never downloads a browser here

# Log lines that mean the server leaked a task or hit an unhandled error.
LOG_PROBLEMS = ("Traceback", "Task was destroyed but it is pending")


def chromium_flags(camera_file: Path, *, fake_ui: bool = True) -> list[str]:
    """Flags for a headless Chromium whose camera plays `camera_file` (.y4m, absolute).
    fake_ui=False leaves the permission prompt in place and denies it."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream=fps=30",
        f"--use-file-for-fake-video-capture={camera_file}",
        # Host candidates must be plain loopback IPs: aiortc gets no mDNS names to resolve.
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    flags.append("--use-fake-ui-for-media-stream" if fake_ui else "--deny-permission-prompts")
    return flags


def write_fake_camera(path: Path, frames: list[np.ndarray], fps: int = 30, min_seconds: float = 3.0) -> Path:
    """Write RGB frames as a yuv420p .y4m, repeated to at least `min_seconds`; Chromium's
    fake camera loops the file, so a ping-pong clip plays without a cut."""
    height, width = frames[0].shape[:2]
    repeats = max(1, math.ceil(min_seconds * fps / len(frames)))
    partial = path.with_suffix(".partial")  # a crashed run never leaves a truncated camera behind
    with av.open(str(partial), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames * repeats:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    partial.replace(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def livestyle_command() -> list[str]:
    """`livestyle` from this checkout: `python -m` with the repository as working directory
    imports its code even when the venv's editable install points at another clone."""
    return [sys.executable, "-m", "server.cli"]


def http_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    # The self-signed HTTPS server's certificate is not trusted here: skip verification.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
        return exc.code, json.load(exc)


@dataclass
class LiveServer:
    """A `livestyle serve` subprocess; its stdout/stderr go to a file (a pipe nobody reads
    would freeze it once full)."""

    url: str
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, *extra_args: str, timeout: float = 30.0, port: int | None = None) -> LiveServer:
        """port: a given one (to restart a server where its pages knew it), else a free one;
        a restart appends to the same log."""
        ARTIFACTS.mkdir(exist_ok=True)
        restart = port is not None
        port = port if port is not None else free_port()
        log_path = ARTIFACTS / f"browser-server-{name}.log"
        command = [*livestyle_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--engine", "preview"]
        with log_path.open("ab" if restart else "wb") as log:
            process = subprocess.Popen([*command, *extra_args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        scheme = "https" if "--tls-self-signed" in extra_args else "http"
        server = cls(f"{scheme}://127.0.0.1:{port}", process, log_path)
        try:
            server._wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status, body = self.health()
                if status == 200 and body.get("status") == "ok":
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log_text()[-3000:]}")

    def health(self) -> tuple[int, dict]:
        return http_json(f"{self.url}/healthz")

    def sessions(self) -> int:
        return self.health()[1]["sessions"]

    def wait_sessions(self, count: int, timeout: float) -> float:
        """Seconds until /healthz reports `count` sessions; raises on timeout."""
        start = time.monotonic()
        while (seen := self.sessions()) != count:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"/healthz still reports {seen} sessions after {timeout} s, expected {count}")
            time.sleep(0.05)
        return time.monotonic() - start

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if any(p in line for p in LOG_PROBLEMS)]

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (a graceful shutdown), SIGKILL if that hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def decode_data_url(url: str) -> np.ndarray:
    """A canvas toDataURL('image/png') -> RGB uint8 array."""
    return decode_png(base64.b64decode(url.split(",", 1)[1]))


def decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def structure_correlation(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """Pearson correlation of the two images' downscaled luma: high when they show the
    same scene, whatever the colours."""
    small = [cv2.resize(luma(x), (size, size), interpolation=cv2.INTER_AREA).ravel() for x in (a, b)]
    return float(np.corrcoef(*small)[0, 1])


# Waits for a fresh frame of #remote and returns it with the #local frames presented just
# before it (PNG data URLs). The stylized frame lags the camera by the round trip, so the
# test matches it against the best of those frames instead of guessing the lag.
CAPTURE_JS = """
async ({ history, timeoutMs }) => {
  const local = document.getElementById("local");
  const remote = document.getElementById("remote");
  const grab = (video) => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return canvas;
  };
  const capture = new Promise((resolve) => {
    const recent = [];
    const onLocal = () => {
      recent.push(grab(local));
      if (recent.length < history) local.requestVideoFrameCallback(onLocal);
      else remote.requestVideoFrameCallback(() => resolve({ recent, stylized: grab(remote) }));
    };
    local.requestVideoFrameCallback(onLocal);
  });
  const stalled = new Promise((_, reject) =>
    setTimeout(() => reject(new Error("no video frames within " + timeoutMs + " ms")), timeoutMs),
  );
  const { recent, stylized } = await Promise.race([capture, stalled]);
  return { local: recent.map((c) => c.toDataURL("image/png")), remote: stylized.toDataURL("image/png") };
}
"""

# Counts frames #remote presents over `windowMs` (requestVideoFrameCallback's presentedFrames);
# a stream that stalls still ends the window, with the frames it managed.
MEASURE_FPS_JS = """
async (windowMs) => {
  const video = document.getElementById("remote");
  return await new Promise((resolve) => {
    let first = null;
    let last = null;
    const finish = () => {
      const seconds = first ? (performance.now() - first.now) / 1000 : windowMs / 1000;
      const frames = first ? last.presented - first.presented : 0;
      resolve({ frames, seconds, fps: frames / seconds });
    };
    const timer = setTimeout(finish, windowMs + 2000);
    const onFrame = (now, meta) => {
      last = { now, presented: meta.presentedFrames };
      first ??= last;
      if (now - first.now >= windowMs) {
        clearTimeout(timer);
        finish();
      } else {
        video.requestVideoFrameCallback(onFrame);
      }
    };
    video.requestVideoFrameCallback(onFrame);
  });
}
"""
