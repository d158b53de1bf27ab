"""A bounded soak (#15 part 7): about a minute of sequential and concurrent real aiortc
sessions against the in-process preview-engine server (connect, stream, change the
prompt, leave). Afterwards the server holds no session, and open files, threads, tasks
and memory are back to the baseline measured after a warm-up round, within a tolerance.

Memory is judged by the bytes malloc holds allocated (glibc `mallinfo2`, all arenas), not
by RSS: each thread that encodes or decodes gets its own glibc arena, and freed blocks
stay in those arenas' pages, so RSS after concurrent sessions sits tens of MB above the
baseline with nothing leaked (3 concurrent sessions x 60 rounds: RSS +87 MB, arena space
73 -> 318 MB, allocated +6 MB of it the bounded preview style cache; CPU, 2026-12-02).
RSS keeps a coarse bound for what bypasses malloc."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import threading
import time
import types

import pytest
from aiohttp import ClientSession
from lean_client import LeanClient
from media import ClipTrack, davis_clip, ping_pong

from pipeline.client import EngineSession
from pipeline.messages import FrameIn, FrameOut
from server.keys import ENGINE, REGISTRY
from signaling.session import Session

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(240)]

SEQUENTIAL_S, CONCURRENT_S, CONCURRENCY = 25.0, 30.0, 3
FD_SLACK, THREAD_SLACK, HEAP_SLACK_MB, RSS_SLACK_MB = 8, 2, 24, 200


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2  # glibc >= 2.33
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.free.argtypes = [ctypes.c_void_p]


def heap_in_use_mb() -> float:
    """Bytes malloc has handed out and not had back: arena chunks in use plus mmapped blocks."""
    info = _LIBC.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def resources() -> dict[str, float]:
    gc.collect()
    # Hand freed heap pages back to the OS, so RSS shows what is still allocated rather
    # than the allocator's high-water mark (glibc keeps freed memory in its arenas).
    _LIBC.malloc_trim(0)
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "native_threads": len(os.listdir("/proc/self/task")),
        "tasks": len(asyncio.all_tasks()),
        "rss_mb": rss_kb / 1024,
        "heap_mb": heap_in_use_mb(),
    }


def live(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def describe(obj: object) -> str:
    """A short, always-safe description (some objects' repr raises, e.g. torch storages)."""
    kind = type(obj).__qualname__
    if isinstance(obj, dict):
        return f"dict{sorted(map(str, obj))[:8]}"
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_qualname} {obj.f_code.co_filename}:{obj.f_lineno}"
    if isinstance(obj, types.FunctionType | types.MethodType):
        return f"{kind} {getattr(obj, '__qualname__', '?')}"
    return kind


def holders(kind: type) -> list[str]:
    """What still refers to each live `kind` (two levels), so a failure names the leak."""
    gc.collect()
    found = []
    everything = gc.get_objects()
    for obj in (o for o in everything if isinstance(o, kind)):
        for ref in gc.get_referrers(obj):
            if ref is everything:
                continue
            outer = [describe(r) for r in gc.get_referrers(ref) if r is not everything][:6]
            found.append(f"{describe(ref)} <- {outer}")
    return found


async def one_session(http: ClientSession, base: str, clip, seconds: float, n: int) -> int:
    client = LeanClient(base, ClipTrack(clip, fps=30), prompt=f"style {n}")
    try:
        await client.connect(http)
        await client.wait_frames(5, timeout=20)
        client.send(type="set_prompt", prompt=f"watercolor {n}", seq=1)
        await asyncio.sleep(seconds)
        return len(client.seen)
    finally:
        await client.close()


async def wait_empty(registry, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(registry) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def test_sequential_and_concurrent_sessions_leave_nothing_behind(preview_server):
    # Counted against what earlier tests left: aiohttp's middleware lru_cache keeps their
    # Applications (and through them their engines) alive in one pytest process.
    kinds = (Session, EngineSession, FrameIn, FrameOut)
    before = {kind: live(kind) for kind in kinds}
    clip = ping_pong(davis_clip("blackswan"))
    # Offers come far faster than a person's (one address, dozens a minute): no offer rate limit.
    srv, base = await preview_server(max_sessions=CONCURRENCY + 1, offer_rate_per_min=0)
    registry, engine = srv.app[REGISTRY], srv.app[ENGINE]
    async with ClientSession() as http:
        # Warm-up: codecs, executor threads and caches a first round of sessions allocates.
        async with asyncio.TaskGroup() as tg:  # one failure cancels the others (no stray peers)
            for i in range(CONCURRENCY):
                tg.create_task(one_session(http, base, clip, 1.0, i))
        await wait_empty(registry)
        baseline = resources()
        sessions = frames = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < SEQUENTIAL_S:
            frames += await one_session(http, base, clip, 1.5, sessions)
            sessions += 1
        t1 = time.monotonic()
        middle = resources()

        async def worker(w: int) -> None:
            nonlocal sessions, frames
            await asyncio.sleep(w * 0.7)  # staggered: sessions come and go while others stream
            while time.monotonic() - t1 < CONCURRENT_S:
                frames += await one_session(http, base, clip, 2.0 + w, 100 * w + sessions)
                sessions += 1

        async with asyncio.TaskGroup() as tg:
            for w in range(CONCURRENCY):
                tg.create_task(worker(w))
        await wait_empty(registry)
    await asyncio.sleep(0.5)  # let closed peer connections finish their last callbacks
    after = resources()
    print(f"\nsoak: {sessions} sessions, {frames} frames received in {time.monotonic() - t0:.0f} s")
    print("  " + ", ".join(f"{k} {baseline[k]:g} -> {middle[k]:g} -> {after[k]:g}" for k in baseline))
    assert sessions >= 12 and frames >= sessions * 5
    assert len(registry) == 0 and engine._sessions == {} and engine.healthy
    # Nothing holds a finished session, nor a frame of one (slots emptied).
    for kind in kinds:
        assert live(kind) <= before[kind], f"{live(kind)} {kind.__name__} held by {holders(kind)}"
    assert after["fds"] <= baseline["fds"] + FD_SLACK
    assert after["threads"] <= baseline["threads"] + THREAD_SLACK
    assert after["native_threads"] <= baseline["native_threads"] + THREAD_SLACK
    assert after["tasks"] <= baseline["tasks"]
    assert after["heap_mb"] <= baseline["heap_mb"] + HEAP_SLACK_MB
    assert after["rss_mb"] <= baseline["rss_mb"] + RSS_SLACK_MB


def test_heap_measure_sees_native_memory_that_was_not_freed():
    # What the soak's memory check rests on: a block malloc'd in native code and kept
    # shows up in full, and freeing it takes it back out (RSS would not, reliably).
    before = heap_in_use_mb()
    blocks = [_LIBC.malloc(1 << 20) for _ in range(2 * HEAP_SLACK_MB)]  # 1 MiB each, like frame buffers
    try:
        assert all(blocks)
        held = heap_in_use_mb()
        assert held - before >= 2 * HEAP_SLACK_MB - 1
    finally:
        for block in blocks:
            _LIBC.free(block)
    assert heap_in_use_mb() - before < 1
