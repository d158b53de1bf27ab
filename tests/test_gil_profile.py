"""bench.gil_profile's parsing of py-spy's raw output (the sampling itself needs py-spy
and ptrace, and is run by hand: docs/performance.md)."""

import pytest

from bench.gil_profile import parse_raw, role_of

pytestmark = pytest.mark.unit

RAW = "\n".join(
    [
        "thread (0x7f01): MainThread;_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:118);"
        "_on_data (aioice/ice.py:10) 30",
        "thread (0x7f02): engine-1;run (pipeline/bridge.py:120);step (pipeline/core.py:88) 12",
        "thread (0x7f06): livestyle-reader;run (signaling/tracks.py:40) 3",
        "thread (0x7f03): video-decoder;decoder_worker (aiortc/rtcrtpreceiver.py:160) 5",
        "thread (0x7f04): ThreadPoolExecutor-0_0;_worker (concurrent/futures/thread.py:93);"
        "encode (signaling/encoders.py:70) 4",
        "thread (0x7f05): Dummy-9;something (numpy/core.py:1) 2",
        "not a sample line",
    ]
)


def test_samples_are_counted_per_role_and_per_thread():
    got = parse_raw(RAW)
    assert got["role"] == {"event loop": 30, "engine": 12, "frames in": 3, "decode": 5, "encode": 4, "other": 2}
    assert got["thread"]["MainThread"] == 30 and got["thread"]["engine-1"] == 12
    assert sum(got["thread"].values()) == 56
    # inclusive per function of the event loop's stacks, lines merged
    assert got["loop_functions"]["_on_data (aioice/ice.py)"] == 30
    assert (
        got["loop_functions"]["run (asyncio/runners.py)"] == 30
        and "step (pipeline/core.py)" not in got["loop_functions"]
    )


def test_a_named_thread_keeps_its_role_whatever_its_stack_calls():
    # the event loop runs aiortc's receiver code; the engine thread calls asyncio helpers
    assert role_of("MainThread", "run (aiortc/rtcrtpreceiver.py:1)") == "event loop"
    assert role_of("engine-2", "call_soon_threadsafe (asyncio/base_events.py:2)") == "engine"
    assert role_of("ThreadPoolExecutor-0_1", "encode (aiortc/rtcrtpsender.py:3)") == "encode"
