"""EngineCore stepped directly, no threads."""

import time

import numpy as np
import pytest
from fakes import FakeBackend, frame_in

from pipeline.core import EngineCore, EngineFatalError
from pipeline.messages import AddSession, PromptApplied, RemoveSession, SessionError, SetPrompt

pytestmark = pytest.mark.unit


def core_with(*sessions, **kw):
    backend = FakeBackend(**kw)
    core = EngineCore(backend)
    for sid, prompt in sessions:
        assert core.execute(AddSession(sid, prompt)) == []
    return core, backend


def test_one_step_batches_one_frame_per_session_and_keeps_timestamps():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))
    fa, fb = frame_in("a", pts=3000), frame_in("b", pts=6000)
    result = core.step([fa, frame_in("a", pts=9000), fb])  # a second frame of "a" is ignored
    assert backend.batches == [["a", "b"]]
    out = {o.session_id: o for o in result.outputs}
    assert out["a"].pts == 3000 and out["b"].pts == 6000
    assert out["a"].time_base == fa.time_base and out["a"].t_in == fa.t_in
    assert int(out["a"].image[0, 0, 0]) == 2 and int(out["b"].image[0, 0, 0]) == 3
    assert core.stats.frames_out.value == 2 and core.stats.steps.value == 1


def test_prompt_change_applies_to_next_step_of_that_session_only():
    core, _backend = core_with(("a", "aa"), ("b", "bbb"))
    t_cmd = time.monotonic()
    assert core.execute(SetPrompt("a", "aaaaa", 1, t_cmd)) == []
    result = core.step([frame_in("a"), frame_in("b")])
    out = {o.session_id: o for o in result.outputs}
    assert int(out["a"].image[0, 0, 0]) == 5 and out["a"].prompt_seq == 1
    assert int(out["b"].image[0, 0, 0]) == 3 and out["b"].prompt_seq == 0
    applied = [e for e in result.events if isinstance(e, PromptApplied)]
    assert len(applied) == 1 and applied[0].session_id == "a" and applied[0].seq == 1
    assert 0 <= applied[0].latency_ms < 5000
    # Reported once, not on every later frame.
    assert not [e for e in core.step([frame_in("a")]).events if isinstance(e, PromptApplied)]


def test_prompt_too_long_is_a_session_error_and_the_old_prompt_stays():
    core, _ = core_with(("a", "aa"), max_prompt_chars=10)
    events = core.execute(SetPrompt("a", "x" * 11, 4, time.monotonic()))
    assert events == [SessionError("a", "prompt_too_long", events[0].message, 4)]
    out = core.step([frame_in("a")]).outputs[0]
    assert int(out.image[0, 0, 0]) == 2 and out.prompt_seq == 0


def test_bad_frames_are_reported_per_session_and_others_still_run():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))
    bad = frame_in("a", np.zeros((8, 8), np.float32))
    result = core.step([bad, frame_in("b")])
    assert [o.session_id for o in result.outputs] == ["b"]
    assert isinstance(result.events[0], SessionError) and result.events[0].code == "bad_frame"
    assert backend.batches == [["b"]]


def test_unknown_and_removed_sessions():
    core, backend = core_with(("a", "aa"))
    assert core.execute(SetPrompt("zz", "p", 1, 0.0))[0].code == "unknown_session"
    core.execute(RemoveSession("a"))
    assert "a" not in backend.prompts
    assert core.step([frame_in("a")]).outputs == []


def test_backend_failure_is_fatal():
    core, backend = core_with(("a", "aa"))
    backend.fail_next_step = RuntimeError("CUDA error: device-side assert")
    with pytest.raises(EngineFatalError, match="device-side assert"):
        core.step([frame_in("a")])


def test_invalid_initial_prompt_starts_empty_with_an_error():
    core = EngineCore(FakeBackend(max_prompt_chars=3))
    events = core.execute(AddSession("a", "too long"))
    assert events[0].code == "prompt_invalid"
    assert int(core.step([frame_in("a")]).outputs[0].image[0, 0, 0]) == 0


def test_pipelined_backend_returns_the_previous_batch_and_flush_drains():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))
    backend.pipelined = True
    first = core.step([frame_in("a", pts=1), frame_in("b", pts=1)])
    assert first.outputs == [] and core.has_inflight
    second = core.step([frame_in("a", pts=2)])
    assert sorted((o.session_id, o.pts) for o in second.outputs) == [("a", 1), ("b", 1)]
    rest = core.flush()
    assert [(o.session_id, o.pts) for o in rest.outputs] == [("a", 2)] and not core.has_inflight
    assert core.flush().outputs == []


def test_pipelined_prompt_seq_is_the_one_at_submit_time():
    core, backend = core_with(("a", "aa"))
    backend.pipelined = True
    core.step([frame_in("a", pts=1)])  # launched with prompt seq 0
    core.execute(SetPrompt("a", "aaaa", 5, time.monotonic()))
    out = core.step([frame_in("a", pts=2)])
    assert [o.prompt_seq for o in out.outputs] == [0]
    assert not [e for e in out.events if isinstance(e, PromptApplied)]  # not yet made with seq 5
    done = core.flush()
    assert done.outputs[0].prompt_seq == 5
    assert [e.seq for e in done.events if isinstance(e, PromptApplied)] == [5]
