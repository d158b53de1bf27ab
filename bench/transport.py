"""Transport measurements on this machine (no GPU needed; docs/transport.md cites them).

    python -m bench.transport encode  [--frames 150] [--out FILE]
    python -m bench.transport latency [--seconds 15] [--repeats 2] [--base-tree DIR] [--out FILE]
    python -m bench.transport browser [--seconds 10] [--repeats 2] [--out FILE]
    python -m bench.transport docs    # the tables in docs/transport.md, from the newest results

`encode`: per frame of a DAVIS clip at 512x512, what the server's send side spends on
each stylized frame with aiortc's encoders fed RGB (before), aiortc's encoders fed the
fan-out's I420, and the realtime encoders fed I420 (now); with bitrate and PSNR.

`latency`: one aiortc client streaming the clip at 30 fps to a real `livestyle serve
--engine preview` process, latency by pts (send -> stylized frame back) with aiortc's
jitter buffer or the marker-bit one on the server's and on the client's receive side.
`--base-tree` adds a server run from another source tree (e.g. `git archive` of the
commit before this work).

`browser`: headless Chromium (the browser tests' fake camera playing the clip) against
the server, with and without the page's minimal-playout-delay request: what the browser
adds after a frame's packets arrive, from its own WebRTC stats per decoded frame (jitter
buffer, assembly, decode, receive->decoded) and from requestVideoFrameCallback (last
packet received -> frame presented).

Configurations are interleaved `--repeats` times so that a change in the machine's load
hits them all alike. Every file records the command, the git commit it ran at (with the
files changed locally, if any), the machine, its load and the library versions.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiortc
import av
import numpy as np
from aiohttp import ClientSession
from aiortc import rtcrtpreceiver
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bench import loopback
from bench.loopback import ClipTrack, LoopbackClient, ping_pong, pts_latencies, read_clip
from bench.provenance import git_state
from bench.serve_process import free_port, health_of, process_cpu_seconds
from signaling.encoders import realtime_encoder
from signaling.jitter import install_marker_release
from signaling.tracks import to_i420

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "davis" / "blackswan.mp4"
TODAY = datetime.date.today().isoformat()

# Server launcher: optionally without this tree's aiortc patches (before server.app is imported).
SERVER = """
import sys
import signaling.encoders, signaling.jitter
if "{release}" == "aiortc": signaling.jitter.install_marker_release = lambda: False
if "{encoders}" == "aiortc": signaling.encoders.install_realtime_encoders = lambda: False
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""

CONFIGS: dict[str, dict[str, str]] = {
    # server receive rule, server encoders, client receive rule
    "aiortc": {"release": "aiortc", "encoders": "aiortc", "client": "aiortc"},
    "marker_server": {"release": "marker", "encoders": "aiortc", "client": "aiortc"},
    "marker_both": {"release": "marker", "encoders": "aiortc", "client": "marker"},
    "marker_both_realtime_encoders": {"release": "marker", "encoders": "realtime", "client": "marker"},
}


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "load_avg_1m_at_start": os.getloadavg()[0],
        "nice": os.nice(0),  # run with a negative nice on a shared machine so others' load bends it less
    }


def write(out: Path, report: dict[str, Any]) -> None:
    report["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}", file=sys.stderr)


def stats(values: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


# ---- encode ---------------------------------------------------------------------------------

CODECS = {
    "VP8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96),
    "H264": RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=97),
}


def _rgb_frame(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(image, format="rgb24")


def _i420_frame(image: np.ndarray) -> av.VideoFrame:
    """What StylizedFanOut hands each track now."""
    return av.VideoFrame.from_ndarray(to_i420(image), format="yuv420p")


VARIANTS: dict[str, tuple[Callable[[RTCRtpCodecParameters], Any], Callable[[np.ndarray], av.VideoFrame]]] = {
    "aiortc_rgb_input": (get_encoder, _rgb_frame),
    "aiortc_i420_input": (get_encoder, _i420_frame),
    "realtime_i420_input": (realtime_encoder, _i420_frame),
}


KEYFRAME_EVERY = 60  # as if a viewer asked for one (PLI) every two seconds: keyframe cost and size


def run_encode(clip: list[np.ndarray], frames: int) -> dict[str, Any]:
    rows = []
    for name, codec in CODECS.items():
        state: dict[str, tuple[Any, Any, list[float], list[float], list[int], list[float]]] = {
            v: (make(codec), get_decoder(codec), [], [], [], []) for v, (make, _) in VARIANTS.items()
        }
        for n in range(frames):
            image = clip[n % len(clip)]
            for variant, (_, to_frame) in VARIANTS.items():  # interleaved: load drift hits all alike
                encoder, decoder, prep_ms, encode_ms, sizes, psnr = state[variant]
                t0 = time.perf_counter()
                frame = to_frame(image)
                frame.pts, frame.time_base = n * 3000, Fraction(1, 90_000)
                t1 = time.perf_counter()
                payloads, ts = encoder.encode(frame, force_keyframe=n % KEYFRAME_EVERY == 0)
                t2 = time.perf_counter()
                prep_ms.append((t1 - t0) * 1000)
                encode_ms.append((t2 - t1) * 1000)
                sizes.append(sum(len(p) for p in payloads))
                for out in decoder.decode(JitterFrame(b"".join(depayload(codec, p) for p in payloads), ts)):
                    assert isinstance(out, av.VideoFrame)
                    err = np.mean((out.to_ndarray(format="rgb24").astype(np.float32) - image) ** 2)
                    psnr.append(10 * np.log10(255**2 / max(float(err), 1e-6)))
        for variant, (_, _, prep_ms, encode_ms, sizes, psnr) in state.items():
            total = [a + b for a, b in zip(prep_ms, encode_ms, strict=True)]
            rows.append(
                {
                    "codec": name,
                    "variant": variant,
                    "frame_build_ms": stats(prep_ms[5:]),
                    "encode_ms": stats(encode_ms[5:]),
                    "build_plus_encode_ms": stats(total[5:]),
                    "kbps": round(statistics.mean(sizes[5:]) * 8 * 30 / 1000, 1),
                    "keyframe_bytes_mean": round(statistics.mean(sizes[KEYFRAME_EVERY::KEYFRAME_EVERY])),
                    "delta_bytes_mean": round(
                        statistics.mean(b for i, b in enumerate(sizes) if i >= 5 and i % KEYFRAME_EVERY)
                    ),
                    "psnr_db": round(statistics.mean(psnr[5:]), 2),
                }
            )
            print(f"encode: {name} {variant}: {rows[-1]['build_plus_encode_ms']}", file=sys.stderr)
    return {
        "frames": frames,
        "size": list(clip[0].shape[:2]),
        "fps_for_kbps": 30,
        "keyframe_every": KEYFRAME_EVERY,
        "rows": rows,
    }


# ---- latency --------------------------------------------------------------------------------


def _serve(config: dict[str, str] | None, tree: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    args = ["serve", "--engine", "preview", "--host", "127.0.0.1", "--port", str(port)]
    if config is None:  # another source tree, as it is
        cmd = [sys.executable, "-m", "server.cli", *args]
    else:
        cmd = [sys.executable, "-c", SERVER.format(**config), *args]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


def _one_run(
    name: str, config: dict[str, str] | None, tree: Path, clip: Path, seconds: float, log_path: Path
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(config, tree, port, log_path)
    try:
        deadline = time.monotonic() + 120
        while (h := health_of(url)) is None or h["status"] != "ok":
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy (see {log_path}): {h}")
            time.sleep(0.5)
        client_release = (config or {"client": "aiortc"})["client"]
        cmd = [sys.executable, "-m", "bench.transport", "client", "--url", url, "--clip", str(clip)]
        cmd += ["--seconds", str(seconds), "--release", client_release]
        cpu0, t0 = process_cpu_seconds(server.pid), time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120, check=True)
        cores = (process_cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(config=name, server_cpu_cores=round(cores, 2), load_avg_1m=os.getloadavg()[0])
        print(f"latency: {name}: p50 {row['p50_ms']} ms p95 {row['p95_ms']} ms {row['fps']} fps", file=sys.stderr)
        return row
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def run_latency(clip: Path, seconds: float, repeats: int, base_tree: Path | None, log_path: Path) -> dict[str, Any]:
    configs: dict[str, dict[str, str] | None] = dict(CONFIGS)
    if base_tree is not None:
        configs = {"base_tree": None, **configs}
    runs = []
    for _ in range(repeats):
        for name, config in configs.items():
            tree = base_tree if config is None and base_tree is not None else REPO
            runs.append(_one_run(name, config, tree, clip, seconds, log_path))
    summary = {}
    for name in configs:
        mine = [r for r in runs if r["config"] == name]
        summary[name] = {
            "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 1),
            "p95_ms": round(statistics.median(r["p95_ms"] for r in mine), 1),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 1),
            "fps": round(statistics.median(r["fps"] for r in mine), 1),
            "client_hold_p50_ms": round(statistics.median(r["client_jitter_buffer_hold_ms"]["p50"] for r in mine), 2),
            "server_cpu_cores": round(statistics.median(r["server_cpu_cores"] for r in mine), 2),
            **({"setup": CONFIGS[name]} if name in CONFIGS else {"setup": f"server from {base_tree}"}),
        }
    return {"seconds_per_run": seconds, "repeats": repeats, "engine": "preview", "summary": summary, "runs": runs}


# ---- browser --------------------------------------------------------------------------------

# Keeps every RTCPeerConnection a page makes, so its receivers and stats can be read.
RECORD_PEERS_JS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__peers = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__peers.push(this); }
  };
})();
"""

# What a page would get without the request: the receivers ignore it.
IGNORE_PLAYOUT_HINTS_JS = """
for (const name of ["jitterBufferTarget", "playoutDelayHint"]) {
  const d = Object.getOwnPropertyDescriptor(RTCRtpReceiver.prototype, name);
  if (d) Object.defineProperty(RTCRtpReceiver.prototype, name, { get: d.get, set() {}, configurable: true });
}
"""

VIDEO_RECEIVERS_JS = """
() => window.__peers.flatMap((pc) => pc.getReceivers())
  .filter((r) => r.track.kind === "video")
  .map((r) => ({ target: r.jitterBufferTarget ?? null, hint: "playoutDelayHint" in r ? r.playoutDelayHint : "absent" }))
"""

# Cumulative inbound video stats (seconds) of the page's first peer connection.
INBOUND_STATS_JS = """
async () => {
  const report = await window.__peers[0].getStats();
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") return s;
  }
  return null;
}
"""

# Last packet received -> frame presented, per presented frame of #remote over windowMs.
RECEIVE_TO_PRESENT_JS = """
async (windowMs) => {
  const video = document.getElementById("remote");
  const gaps = [];
  const start = performance.now();
  await new Promise((resolve) => {
    const onFrame = (now, meta) => {
      if (meta.receiveTime !== undefined) gaps.push(meta.presentationTime - meta.receiveTime);
      if (performance.now() - start < windowMs) video.requestVideoFrameCallback(onFrame);
      else resolve();
    };
    video.requestVideoFrameCallback(onFrame);
  });
  return gaps;
}
"""

PER_FRAME = {  # ms per frame: (cumulative seconds, frame count)
    "jitter_buffer_ms": ("jitterBufferDelay", "jitterBufferEmittedCount"),
    "jitter_buffer_target_ms": ("jitterBufferTargetDelay", "jitterBufferEmittedCount"),
    "jitter_buffer_minimum_ms": ("jitterBufferMinimumDelay", "jitterBufferEmittedCount"),
    "assembly_ms": ("totalAssemblyTime", "framesAssembledFromMultiplePackets"),
    "decode_ms": ("totalDecodeTime", "framesDecoded"),
    "receive_to_decoded_ms": ("totalProcessingDelay", "framesDecoded"),
}


def _per_frame(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, (total, count) in PER_FRAME.items():
        frames = after.get(count, 0) - before.get(count, 0)
        seconds = after.get(total, 0.0) - before.get(total, 0.0)
        out[key] = round(seconds / frames * 1000, 2) if frames > 0 and total in after else None
    return out


def run_browser(clip: Path, seconds: float, repeats: int, log_path: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO / "tests"))  # the browser tests' Chromium flags and fake camera
    from browser_support import CHROMIUM, chromium_flags, write_fake_camera

    camera = write_fake_camera(Path("/tmp/livestyle-transport-camera.y4m"), ping_pong(read_clip(clip)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(CONFIGS["marker_both_realtime_encoders"], REPO, port, log_path)
    runs: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while (h := health_of(url)) is None or h["status"] != "ok":
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy (see {log_path}): {h}")
            time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=chromium_flags(camera.resolve())
            )
            browser_version = browser.version
            for _ in range(repeats):
                for variant in ("page_as_shipped", "without_playout_request"):
                    context = browser.new_context()
                    page = context.new_page()
                    page.add_init_script(RECORD_PEERS_JS)
                    if variant == "without_playout_request":
                        page.add_init_script(IGNORE_PLAYOUT_HINTS_JS)
                    page.goto(url)
                    page.wait_for_function("document.getElementById('engine-badge').dataset.kind === 'preview'")
                    page.click("#start")
                    page.wait_for_function("document.getElementById('remote').videoWidth > 0", timeout=30_000)
                    page.wait_for_timeout(3000)  # past the first keyframe and the rate ramp-up
                    before = page.evaluate(INBOUND_STATS_JS)
                    gaps = page.evaluate(RECEIVE_TO_PRESENT_JS, seconds * 1000)
                    after = page.evaluate(INBOUND_STATS_JS)
                    row: dict[str, Any] = {"variant": variant, "receivers": page.evaluate(VIDEO_RECEIVERS_JS)}
                    row.update(_per_frame(before, after))
                    row["receive_to_present_ms"] = stats(gaps) if gaps else None
                    row["frames_decoded"] = after["framesDecoded"] - before["framesDecoded"]
                    print(f"browser: {variant}: {row}", file=sys.stderr)
                    runs.append(row)
                    page.click("#stop")
                    context.close()
                    for _ in range(40):  # the session closes when the page hangs up
                        if (health_of(url) or {}).get("sessions", 1) == 0:
                            break
                        time.sleep(0.25)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = {}
    for variant in ("page_as_shipped", "without_playout_request"):
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            key: round(statistics.median(v), 2) if (v := [r[key] for r in mine if r[key] is not None]) else None
            for key in PER_FRAME
        }
        p50s = [r["receive_to_present_ms"]["p50"] for r in mine if r["receive_to_present_ms"]]
        summary[variant]["receive_to_present_p50_ms"] = round(statistics.median(p50s), 2) if p50s else None
    browser_name = f"Chromium {browser_version} (headless)"
    return {"browser": browser_name, "seconds_per_run": seconds, "summary": summary, "runs": runs}


# ---- docs -----------------------------------------------------------------------------------

DOCS = REPO / "docs" / "transport.md"
BEGIN, END = "<!-- bench.transport tables: begin -->", "<!-- bench.transport tables: end -->"
RESULTS = REPO / "bench" / "results" / "transport"  # not the harness's schema: its own layout


def _newest(kind: str) -> tuple[Path, dict[str, Any]]:
    files = sorted(RESULTS.glob(f"*-cpu-transport-{kind}.json"))
    if not files:
        raise FileNotFoundError(f"no {RESULTS}/*-cpu-transport-{kind}.json; run `python -m bench.transport {kind}`")
    return files[-1], json.loads(files[-1].read_text())


def _commit(report: dict[str, Any]) -> str:
    git = report.get("git") or {}
    if not git.get("commit"):
        return "commit not recorded"
    return f"commit `{git['commit'][:7]}`" + (" with local changes" if git.get("dirty") else "")


def _where(path: Path, report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"`{path.relative_to(REPO)}`: `{report['command']}` at {_commit(report)} on {report['date']} "
        f"at nice {m.get('nice', 0)}, "
        f"{m['cpu']} ({m['cores']} cores, shared; 1-minute load average {m['load_avg_1m_at_start']:.1f} at the start, "
        f"{m['load_avg_1m_at_end']:.1f} at the end), aiortc {m['aiortc']}, PyAV {m['av']}."
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render_tables() -> str:
    lines = []
    path, report = _newest("latency")
    lat = report["latency"]
    lines += [
        "**Loopback latency by pts** (one aiortc client, 512x512 DAVIS clip at 30 fps, preview engine,",
        f"{lat['seconds_per_run']:.0f} s per run, medians of {lat['repeats']} interleaved runs).",
        _where(path, report),
        "",
        "| configuration | server receive | server encoders | client receive | p50 ms | p95 ms | p99 ms | fps "
        "| client jitter-buffer hold p50 ms | server CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in lat["summary"].items():
        setup = row["setup"]
        cells = (
            ["the code before this work", "aiortc", "aiortc", "aiortc"]
            if isinstance(setup, str)
            else [
                name.replace("_", " "),
                setup["release"],
                setup["encoders"],
                setup["client"],
            ]
        )
        lines.append(
            f"| {' | '.join(cells)} | {_ms(row['p50_ms'])} | {_ms(row['p95_ms'])} | {_ms(row['p99_ms'])} "
            f"| {row['fps']:.1f} | {row['client_hold_p50_ms']:.2f} | {row['server_cpu_cores']:.2f} |"
        )
    path, report = _newest("encode")
    enc = report["encode"]
    lines += [
        "",
        f"**Send side per stylized frame** ({enc['size'][0]}x{enc['size'][1]}, {enc['frames']} frames, interleaved, "
        f"a keyframe every {enc['keyframe_every']}; "
        "frame build = what the fan-out does, encode = aiortc's `encoder.encode`).",
        _where(path, report),
        "",
        "| codec | encoder and input | frame build p50 ms | encode p50 / p95 ms | build + encode p50 / p95 ms "
        "| kbps | keyframe / delta bytes | PSNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in enc["rows"]:
        e, t = row["encode_ms"], row["build_plus_encode_ms"]
        lines.append(
            f"| {row['codec']} | {row['variant'].replace('_', ' ')} | {row['frame_build_ms']['p50']:.2f} "
            f"| {e['p50']:.2f} / {e['p95']:.2f} | {t['p50']:.2f} / {t['p95']:.2f} | {row['kbps']:.0f} "
            f"| {row['keyframe_bytes_mean']} / {row['delta_bytes_mean']} | {row['psnr_db']:.2f} |"
        )
    path, report = _newest("browser")
    br = report["browser"]
    variants = list(br["summary"])
    lines += [
        "",
        f"**What the browser adds** ({br['browser']}, fake camera playing the clip, server as shipped; per decoded "
        f"frame from its WebRTC stats, {br['seconds_per_run']:.0f} s per run, medians over runs).",
        _where(path, report),
        "",
        "| per frame, ms | " + " | ".join(v.replace("_", " ") for v in variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for key in [*PER_FRAME, "receive_to_present_p50_ms"]:
        label = key.removesuffix("_ms").replace("_", " ")
        lines.append(f"| {label} | " + " | ".join(_ms(br["summary"][v][key]) for v in variants) + " |")
    return "\n".join(lines)


def write_docs() -> None:
    text = DOCS.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{render_tables()}\n{END}{tail}")
    print(f"updated {DOCS}", file=sys.stderr)


class HoldTimer:
    """Stands in for aiortc.rtcrtpreceiver.JitterBuffer around whichever buffer is installed:
    per released video frame, the time from the arrival of its last packet to its release
    (what the release rule itself adds, whatever the CPU load does to the rest)."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self._make = make
        self.holds_ms: list[float] = []

    def __call__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
        buffer = self._make(capacity, prefetch=prefetch, is_video=is_video)
        if is_video:
            buffer.add = self._timed(buffer.add)
        return buffer

    def _timed(self, add: Callable[[Any], tuple[bool, Any]]) -> Callable[[Any], tuple[bool, Any]]:
        last_arrival: dict[int, float] = {}  # RTP timestamp -> arrival of its newest packet

        def timed(packet: Any) -> tuple[bool, Any]:
            last_arrival[packet.timestamp] = time.monotonic()
            if len(last_arrival) > 256:
                del last_arrival[next(iter(last_arrival))]
            pli, frame = add(packet)
            if frame is not None and frame.timestamp in last_arrival:
                self.holds_ms.append((time.monotonic() - last_arrival[frame.timestamp]) * 1000)
            return pli, frame

        return timed


async def _measure_client(url: str, clip: Path, seconds: float, release: str) -> dict[str, Any]:
    if release == "marker":
        install_marker_release()
    timer = HoldTimer(rtcrtpreceiver.JitterBuffer)
    rtcrtpreceiver.JitterBuffer = timer  # type: ignore[assignment,misc]
    loopback.install_marker_release = lambda: True  # type: ignore[assignment]  # chosen above
    track = ClipTrack(ping_pong(read_clip(clip)), fps=30)
    async with ClientSession() as http:
        client = LoopbackClient(url, track)
        await client.connect(http, codec="VP8")
        await client.wait_frames(30, timeout=60)  # past the first keyframe and rate ramp-up
        n0, t0 = len(client.received), time.monotonic()
        timer.holds_ms.clear()
        await asyncio.sleep(seconds)
        fps = (len(client.received) - n0) / (time.monotonic() - t0)
        holds = list(timer.holds_ms)
        await client.close()
    latencies, stamped = pts_latencies(track, client.received[n0:])
    return {
        "fps": round(fps, 1),
        **{f"{k}_ms": v for k, v in stats(latencies).items()},
        "client_jitter_buffer_hold_ms": stats(holds),
        "frames": len(latencies),
        "stamps_agreeing": stamped,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="encoder cost per frame, before/after")
    e.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    e.add_argument("--frames", type=int, default=150)
    e.add_argument("--out", type=Path, default=RESULTS / f"{TODAY}-cpu-transport-encode.json")
    lat = sub.add_parser("latency", help="loopback latency with each receive rule")
    lat.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    lat.add_argument("--seconds", type=float, default=15.0)
    lat.add_argument("--repeats", type=int, default=2)
    lat.add_argument("--base-tree", type=Path, default=None)
    lat.add_argument("--log", type=Path, default=Path("/tmp/livestyle-transport-bench.log"))
    lat.add_argument("--out", type=Path, default=RESULTS / f"{TODAY}-cpu-transport-latency.json")
    b = sub.add_parser("browser", help="what headless Chromium adds, with and without the playout request")
    b.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    b.add_argument("--seconds", type=float, default=10.0)
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--log", type=Path, default=Path("/tmp/livestyle-transport-bench.log"))
    b.add_argument("--out", type=Path, default=RESULTS / f"{TODAY}-cpu-transport-browser.json")
    sub.add_parser("docs", help="rewrite the tables in docs/transport.md from the newest results")
    c = sub.add_parser("client", help="(internal) one measuring client; prints a JSON line")
    c.add_argument("--url", required=True)
    c.add_argument("--clip", type=Path, required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--release", choices=["aiortc", "marker"], required=True)
    args = p.parse_args()
    if args.command == "docs":
        write_docs()
        return
    if args.command == "client":
        print(json.dumps(asyncio.run(_measure_client(args.url, args.clip, args.seconds, args.release))), flush=True)
        return
    report: dict[str, Any] = {"command": " ".join(["python -m bench.transport", *sys.argv[1:]]), "date": TODAY}
    report["git"] = git_state()
    report["machine"] = machine()
    if args.command == "encode":
        report["encode"] = run_encode(ping_pong(read_clip(args.clip)), args.frames)
    elif args.command == "browser":
        report["browser"] = run_browser(args.clip, args.seconds, args.repeats, args.log)
    else:
        report["latency"] = run_latency(args.clip, args.seconds, args.repeats, args.base_tree, args.log)
    write(args.out, report)


if __name__ == "__main__":
    main()
