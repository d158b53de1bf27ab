"""EngineCore stepped directly, no threads."""

import time

import numpy as np
import pytest
from fakes import FakeBackend, FakeOutOfMemory, frame_in

from pipeline.core import MAX_TRANSIENT_IN_A_ROW, EngineCore, EngineFatalError
from pipeline.messages import AddSession, PromptApplied, RemoveSession, SessionError, SetPrompt, TransientFault
from pipeline.runtime import RuntimeConfig
from pipeline.scheduler import Launch

pytestmark = pytest.mark.unit


def core_with(*sessions, text_budget=2, **kw):
    backend = FakeBackend(**kw)
    core = EngineCore(backend, runtime=RuntimeConfig(text_budget=text_budget))
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


# ---- prompt coalescing and the per-step text budget -------------------------------------------


def test_a_prompt_flood_never_delays_another_session_and_text_work_stays_bounded():
    """One session sends 4000 distinct prompts over 200 steps; the victim's frame is in
    every step, no step does more than text_budget sessions' text work, and every frame
    of the flooder reports exactly the prompt it was made with."""
    core, backend = core_with(("victim", "vv"), ("flood", "f"))
    budget = core.sessions.text_budget
    prompts: dict[int, str] = {0: "f"}
    seq = 0
    applied: list[int] = []
    for step in range(200):
        for _ in range(20):
            seq += 1
            prompts[seq] = "p" * (1 + seq % 40)
            assert core.execute(SetPrompt("flood", prompts[seq], seq, time.monotonic())) == []
        waiting = [frame_in("victim", pts=step), frame_in("flood", pts=step)]
        decision = core.plan(waiting, {})
        assert isinstance(decision, Launch) and "victim" in decision.session_ids
        result = core.launch([f for f in waiting if f.session_id in decision.session_ids])
        out = {o.session_id: o for o in result.outputs}
        assert int(out["victim"].image[0, 0, 0]) == 2 and out["victim"].prompt_seq == 0
        flood = out["flood"]
        assert int(flood.image[0, 0, 0]) == len(prompts[flood.prompt_seq]) % 256  # exact seq
        applied += [e.seq for e in result.events if isinstance(e, PromptApplied)]
    assert all(b == ["victim", "flood"] for b in backend.batches)
    assert max(backend.text_work) <= budget
    assert backend.set_prompt_calls <= 200  # latest wins: at most one prompt change per step
    assert applied == sorted(applied) and applied[-1] == seq  # the newest one applied, in order


def test_new_sessions_wait_for_their_first_turn_in_arrival_order():
    core, backend = core_with(("old", "o"), text_budget=1)
    core.step([frame_in("old")])  # conditioned
    for sid in ("n1", "n2", "n3"):
        core.execute(AddSession(sid, "nnn"))
    core.execute(SetPrompt("old", "oooo", 1, time.monotonic()))  # asked after the newcomers
    served = []
    for _ in range(4):
        result = core.step([frame_in(s) for s in ("n3", "old", "n2", "n1")])
        served.append(sorted(o.session_id for o in result.outputs))
        assert "old" in served[-1]  # never held back by the newcomers' text work
    assert served == [["n1", "old"], ["n1", "n2", "old"], ["n1", "n2", "n3", "old"], ["n1", "n2", "n3", "old"]]
    assert backend.text_work[1:] == [1, 1, 1, 1]
    # The prompt change waited its turn after n3 and kept the old conditioning meanwhile.
    assert int(core.step([frame_in("old")]).outputs[0].image[0, 0, 0]) == 4


def test_plan_leaves_frames_of_sessions_without_a_turn_waiting():
    core, _ = core_with(text_budget=1)
    core.execute(AddSession("a", "a"))
    core.execute(AddSession("b", "b"))
    decision = core.plan([frame_in("b", t_in=1.0), frame_in("a", t_in=2.0)], {})
    assert decision == Launch(("a",))  # b's frame stays in its slot for the next step


def test_a_reattached_session_keeps_its_prompt_seq():
    core, _ = core_with()
    core.execute(AddSession("a", "abc", 7))
    out = core.step([frame_in("a")]).outputs[0]
    assert out.prompt_seq == 7 and int(out.image[0, 0, 0]) == 3


# ---- faults -------------------------------------------------------------------------------------


def test_out_of_memory_drops_that_step_and_the_engine_continues():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))
    backend.faults.plan[2] = "oom"
    assert len(core.step([frame_in("a"), frame_in("b")]).outputs) == 2
    failed = core.step([frame_in("a"), frame_in("b")])
    assert failed.outputs == [] and failed.events == [TransientFault(failed.events[0].message, 2)]
    assert "out of memory" in failed.events[0].message and len(backend.faults.recovered) == 1
    assert len(core.step([frame_in("a"), frame_in("b")]).outputs) == 2
    assert core.stats.transient_faults.value == 1 and core.stats.frames_lost.value == 2


def test_a_transient_fault_drops_every_step_in_flight():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))
    backend.pipelined = True
    backend.faults.plan[2] = "oom"
    assert core.step([frame_in("a")]).outputs == [] and core.has_inflight
    failed = core.step([frame_in("b")])  # its submit fails: the batch in flight is gone too
    assert failed.events[0].frames_lost == 2 and not core.has_inflight
    core.step([frame_in("a", pts=5)])
    assert [o.pts for o in core.flush().outputs] == [5]


def test_transient_faults_without_a_good_step_in_between_become_fatal():
    core, backend = core_with(("a", "aa"))
    backend.faults.plan.update({n: "oom" for n in range(1, MAX_TRANSIENT_IN_A_ROW + 2)})
    for _ in range(MAX_TRANSIENT_IN_A_ROW):
        assert isinstance(core.step([frame_in("a")]).events[0], TransientFault)
    with pytest.raises(EngineFatalError, match="transient errors in a row"):
        core.step([frame_in("a")])


def test_errors_the_backend_does_not_recover_from_are_fatal():
    core, backend = core_with(("a", "aa"))
    backend.fail_next_step = FakeOutOfMemory("CUDA out of memory")
    backend.recover = lambda exc: (_ for _ in ()).throw(RuntimeError("cannot free"))  # type: ignore[method-assign]
    with pytest.raises(EngineFatalError, match="recovering failed: cannot free"):
        core.step([frame_in("a")])
    backend.recover = lambda exc: False  # type: ignore[method-assign]
    backend.fail_next_step = FakeOutOfMemory("CUDA out of memory")
    with pytest.raises(EngineFatalError, match="out of memory"):
        core.step([frame_in("a")])


def test_a_backend_call_failing_for_one_session_stays_in_that_session():
    core, backend = core_with(("a", "aa"), ("b", "bbb"))

    def broken_set_prompt(session_id, prompt):
        raise ValueError(f"tokenizer exploded on {prompt!r}")

    backend.set_prompt = broken_set_prompt  # type: ignore[method-assign]
    core.execute(SetPrompt("a", "zz", 3, time.monotonic()))
    result = core.step([frame_in("a"), frame_in("b")])
    assert [e.code for e in result.events if isinstance(e, SessionError)] == ["session_failed"]
    assert result.events[0].session_id == "a" and result.events[0].seq == 3
    assert {o.session_id: o.prompt_seq for o in result.outputs} == {"a": 0, "b": 0}  # both still stream

    def broken_open(session_id, prompt):
        raise RuntimeError("no memory for noise")

    backend.open_session = broken_open  # type: ignore[method-assign]
    events = core.execute(AddSession("c", "c"))
    assert [(e.session_id, e.code) for e in events] == [("c", "session_failed")]
    assert "c" not in core.session_ids and len(core.step([frame_in("b")]).outputs) == 1


def test_many_sessions_changing_prompts_at_once_share_the_text_budget_in_turn():
    names = [f"s{i}" for i in range(6)]
    core, backend = core_with(("victim", "v"), *((n, "x") for n in names), text_budget=2)
    everyone = ["victim", *names]
    first = [len(core.step([frame_in(s) for s in everyone]).outputs) for _ in range(4)]
    assert first == [2, 4, 6, 7]  # first conditioning: two newcomers per step
    backend.text_work.clear()
    applied_at: dict[str, int] = {}
    for step in range(6):
        if step == 0:
            for i, n in enumerate(names):
                core.execute(SetPrompt(n, "y" * (i + 2), 1, time.monotonic()))
        result = core.step([frame_in(s) for s in ["victim", *names]])
        assert len(result.outputs) == 7  # nobody waits: the rest keep their conditioning
        for e in result.events:
            if isinstance(e, PromptApplied):
                applied_at[e.session_id] = step
    assert max(backend.text_work) <= 2
    assert applied_at == {"s0": 0, "s1": 0, "s2": 1, "s3": 1, "s4": 2, "s5": 2}  # in the order asked
