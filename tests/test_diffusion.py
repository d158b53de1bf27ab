"""Diffusion engine correctness anchors on CPU with tiny random components: the engine
must compute what diffusers' DreamLiteMobilePipeline computes."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from media import davis_clip
from PIL import Image

from pipeline.config import DiffusionConfig, EngineConfig
from pipeline.core import EngineCore, PromptRejected
from pipeline.diffusion.backend import DiffusionBackend, WarmupOutOfMemory
from pipeline.diffusion.loading import Components
from pipeline.diffusion.schedule import FlowSchedule
from pipeline.diffusion.stages import DenoiseDecode, encode_reference
from pipeline.diffusion.text import EDIT_INSTRUCTION, EDIT_TEMPLATE, SYSTEM_PREFIX_TOKENS, TextConditioner
from pipeline.diffusion.tiny import build_tiny_components, tiny_pipeline
from pipeline.messages import AddSession, EngineInfo, FrameIn, PromptApplied, Reseed, SessionError, SetPrompt

pytestmark = [pytest.mark.diffusion, pytest.mark.timeout(300)]

PROMPT = "make it a van Gogh painting"
SEED = 42
# The pipeline's own settings: text encoder sees 512x512 (256 image tokens), no padding.
PIPELINE_SETTINGS = {"text_image_size": 512, "text_tokens": 400, "seed": SEED, "text_mode": "every"}


def components() -> Components:
    c = build_tiny_components(0)  # deterministic: every call gives the same weights
    return Components(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler, c.processor)


def backend(max_batch: int = 4, **settings) -> DiffusionBackend:
    info = EngineInfo("diffusion", "tiny", "test", 512, max_batch, 500)
    return DiffusionBackend(components(), info=info, config=DiffusionConfig(**settings), device=torch.device("cpu"))


def frame(session: str, image: np.ndarray, pts: int = 0) -> FrameIn:
    return FrameIn(session, image, pts, Fraction(1, 90000), time.monotonic())


def run(b: DiffusionBackend, frames: list[FrameIn]) -> list[np.ndarray]:
    return b.collect(b.submit(frames))


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return davis_clip("bmx-trees")


@pytest.fixture(scope="module")
def reference(clip):
    """The diffusers pipeline (stock components) on one DAVIS frame: uint8 output and its
    prompt embeddings."""
    c = build_tiny_components(0)
    pipe = tiny_pipeline(c)
    image = Image.fromarray(clip[5])
    with torch.no_grad():
        out = pipe(
            prompt=PROMPT,
            image=image,
            height=512,
            width=512,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(SEED),
            output_type="pt",
        ).images
        embeds, mask = pipe.encode_prompt(
            mode="edit",
            prompts=[EDIT_INSTRUCTION.format(PROMPT)],
            image=image,
            device="cpu",
            dtype=torch.float32,
        )
    return {
        "pipe": pipe,
        "float": out[0],
        "uint8": (out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(),
        "embeds": embeds,
        "mask": mask,
    }


def test_templates_and_schedule_are_the_pipelines(reference):
    pipe = reference["pipe"]
    assert EDIT_TEMPLATE == pipe.prompt_template_encode_edit
    assert SYSTEM_PREFIX_TOKENS == pipe.prompt_template_encode_edit_start_idx
    one = FlowSchedule.from_scheduler(pipe.scheduler, 1, 64, 64)
    assert one.sigmas == (1.0, 0.0) and one.timesteps == (1000.0,)
    four = FlowSchedule.from_scheduler(pipe.scheduler, 4, 64, 64)
    assert np.allclose(four.sigmas, [1.0, 0.849491, 0.652943, 0.385418, 0.0], atol=1e-5)


def test_text_encoder_path_matches_pipeline_encode_prompt(reference, clip):
    c = components()
    text = TextConditioner(c.text_encoder, c.tokenizer, image_size=512, text_tokens=400, device=torch.device("cpu"))
    frames = torch.from_numpy(clip[5]).permute(2, 0, 1)[None].float()
    cond, mask = text.encode(frames, [text.tokens(PROMPT)])
    n = reference["embeds"].shape[1]
    assert int(mask.sum()) == n == int(reference["mask"].sum())
    torch.testing.assert_close(cond[0, :n], reference["embeds"][0], atol=1e-4, rtol=1e-4)
    # Batched with another prompt: the same row is unchanged.
    cond2, _ = text.encode(frames.repeat(2, 1, 1, 1), [text.tokens(PROMPT), text.tokens("pencil sketch")])
    torch.testing.assert_close(cond2[0, :n], reference["embeds"][0], atol=1e-4, rtol=1e-4)


def test_latent_path_matches_pipeline_denoise_with_its_own_conditioning(reference, clip):
    c = components()
    frames = torch.from_numpy(clip[5]).permute(2, 0, 1)[None].float()
    latents = encode_reference(c.vae, frames)
    noise = torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(SEED))
    schedule = FlowSchedule.from_scheduler(c.scheduler, 1, 64, 64)
    with torch.no_grad():
        out = DenoiseDecode(c.unet, c.vae, schedule, 512)(noise, latents, reference["embeds"], reference["mask"])
    diff = np.abs(out[0].numpy().astype(int) - reference["uint8"].astype(int))
    assert diff.max() <= 1  # uint8 rounding of the same float picture


def test_engine_step_equals_the_pipeline(reference, clip):
    b = backend(**PIPELINE_SETTINGS)
    b.open_session("a", PROMPT)
    out = run(b, [frame("a", clip[5])])[0]
    diff = np.abs(out.astype(int) - reference["uint8"].astype(int))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert diff.max() <= 1, f"engine differs from the pipeline by up to {diff.max()} levels"


def test_cross_session_batch_equals_sessions_one_at_a_time(clip):
    b = backend(**PIPELINE_SETTINGS)
    prompts = {"a": PROMPT, "b": "pencil sketch", "c": "neon cyberpunk"}
    for sid, p in prompts.items():
        b.open_session(sid, p)
    frames = [frame(sid, clip[i * 7]) for i, sid in enumerate(prompts)]
    batched = run(b, frames)  # 3 rows, padded to bucket 4
    alone = [run(b, [f])[0] for f in frames]
    for x, y in zip(batched, alone, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    assert not np.array_equal(batched[0], batched[1])


def test_prompt_change_applies_to_the_next_step_of_that_session_only(clip):
    core = EngineCore(backend(**PIPELINE_SETTINGS))
    core.execute(AddSession("a", PROMPT))
    core.execute(AddSession("b", PROMPT))
    f = clip[3]
    first = {o.session_id: o.image for o in core.step([frame("a", f), frame("b", f)]).outputs}
    assert core.execute(SetPrompt("a", "a charcoal drawing at night", 1, time.monotonic())) == []
    result = core.step([frame("a", f), frame("b", f)])
    second = {o.session_id: o for o in result.outputs}
    assert not np.array_equal(second["a"].image, first["a"]) and second["a"].prompt_seq == 1
    assert np.array_equal(second["b"].image, first["b"]) and second["b"].prompt_seq == 0
    applied = [e for e in result.events if isinstance(e, PromptApplied)]
    assert [(e.session_id, e.seq) for e in applied] == [("a", 1)]


def test_reseed_changes_that_sessions_noise_only_and_its_seed_gives_back_the_original(clip):
    core = EngineCore(backend(**PIPELINE_SETTINGS))
    core.execute(AddSession("a", PROMPT))
    core.execute(AddSession("b", PROMPT))
    f = clip[3]
    first = {o.session_id: o.image for o in core.step([frame("a", f), frame("b", f)]).outputs}
    assert np.array_equal(first["a"], first["b"])  # same prompt, same seed, same frame
    assert core.execute(Reseed("a", 7, 1)) == []
    second = {o.session_id: o.image for o in core.step([frame("a", f), frame("b", f)]).outputs}
    assert np.abs(second["a"].astype(int) - first["a"].astype(int)).mean() > 1, "new noise changed nothing"
    assert np.array_equal(second["b"], first["b"])
    assert core.execute(Reseed("a", SEED, 2)) == []  # the configured seed: the original take
    third = {o.session_id: o.image for o in core.step([frame("a", f)]).outputs}
    assert np.abs(third["a"].astype(int) - first["a"].astype(int)).max() <= 1
    errors = core.execute(Reseed("nobody", 1, 3))
    assert [e.code for e in errors] == ["unknown_session"]


NEW_PROMPT = "a charcoal drawing at night"


@pytest.mark.parametrize("blend", [3, 0])
def test_a_new_prompt_blends_in_over_the_configured_number_of_frames(clip, blend):
    """Session "a" switches prompt; "old" keeps the old one and "new" had the new one from the
    start (same frame: same conditioning in mode 'every'). With prompt_blend=N, the UNet's
    conditioning of "a" for the next N frames is lerp(old, new, k/(N+1)), k = 1..N, and
    frame N+1 is the new prompt's, pixel for pixel."""
    b = backend(**PIPELINE_SETTINGS, prompt_blend=blend)
    conds: list[torch.Tensor] = []
    denoise = b.denoise

    def spy(noise, reference, cond, cond_mask):
        conds.append(cond.clone())
        return denoise(noise, reference, cond, cond_mask)

    b.denoise = spy  # type: ignore[assignment]
    core = EngineCore(b)
    order = ("a", "old", "new")
    for sid, prompt in zip(order, (PROMPT, PROMPT, NEW_PROMPT), strict=True):
        core.execute(AddSession(sid, prompt))
    f = clip[3]

    def step() -> tuple[dict[str, np.ndarray], torch.Tensor]:
        result = core.step([frame(s, f) for s in order])
        return {o.session_id: o.image for o in result.outputs}, conds[-1]

    images, _ = step()
    while len(images) < 3:  # first conditionings are handed out a few sessions per step
        images, _ = step()
    core.execute(SetPrompt("a", NEW_PROMPT, 1, time.monotonic()))
    for k in range(1, blend + 1):
        images, cond = step()
        expected = torch.lerp(cond[1], cond[2], k / (blend + 1))
        assert torch.allclose(cond[0], expected, atol=1e-5), f"blended frame {k}: not the expected mix"
        assert not np.array_equal(images["a"], images["new"])
    images, cond = step()
    assert torch.equal(cond[0], cond[2]), f"frame {blend + 1} is not conditioned on the new prompt alone"
    assert np.abs(images["a"].astype(int) - images["new"].astype(int)).max() <= 1


def test_prompt_over_the_token_budget_is_refused_and_the_old_prompt_kept(clip):
    b = backend(text_tokens=200)
    with pytest.raises(PromptRejected) as info:
        b.check_prompt("gold " * 60)
    assert info.value.code == "prompt_too_long" and "200" in info.value.message
    core = EngineCore(b)
    core.execute(AddSession("a", PROMPT))
    before = core.step([frame("a", clip[0])]).outputs[0].image
    events = core.execute(SetPrompt("a", "gold " * 60, 3, time.monotonic()))
    assert isinstance(events[0], SessionError) and events[0].code == "prompt_too_long" and events[0].seq == 3
    after = core.step([frame("a", clip[0])]).outputs[0]
    assert after.prompt_seq == 0 and np.abs(after.image.astype(int) - before.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("settings", "expected_calls"),
    [
        ({"text_mode": "every"}, 7),
        ({"text_mode": "refresh", "text_refresh": 3}, 3),  # steps 0, 3, 6
        ({"text_mode": "once"}, 1),
    ],
)
def test_text_encoder_schedule(clip, settings, expected_calls):
    b = backend(**settings)
    b.open_session("a", PROMPT)
    for i in range(7):
        run(b, [frame("a", clip[i])])
    assert b.text_stage.calls == expected_calls
    b.set_prompt("a", "watercolor")  # a new prompt always refreshes at the next step
    run(b, [frame("a", clip[7])])
    assert b.text_stage.calls == expected_calls + 1


def test_prompt_only_mode_encodes_each_prompt_once_for_all_sessions(clip):
    b = backend(text_mode="prompt")
    for sid in ("a", "b", "c"):
        b.open_session(sid, PROMPT)
    run(b, [frame(s, clip[0]) for s in ("a", "b", "c")])
    run(b, [frame(s, clip[1]) for s in ("a", "b", "c")])
    assert b.text_stage.calls == 1
    b.set_prompt("b", "pencil sketch")
    run(b, [frame(s, clip[2]) for s in ("a", "b", "c")])
    assert b.text_stage.calls == 2


@pytest.mark.parametrize(("representative", "rows"), [(True, 1), (False, 4)])
def test_clip_mode_encodes_one_representative_frame_or_all(clip, representative, rows):
    b = backend(text_mode="every", representative_frame=representative)
    b.open_session("clip", PROMPT)
    out = run(b, [frame("clip", clip[i], pts=i) for i in range(4)])
    assert len(out) == 4 and b.text_stage.rows == rows


def test_batches_pad_to_the_configured_buckets(clip):
    b = backend(max_batch=4, buckets=(1, 4))
    assert b.buckets() == [1, 4] and b.bucket_for(2) == 4 and b.bucket_for(1) == 1
    for sid in ("a", "b"):
        b.open_session(sid, PROMPT)
    ticket = b.submit([frame("a", clip[0]), frame("b", clip[1])])
    assert ticket.rows == 2 and len(b.collect(ticket)) == 2
    with pytest.raises(ValueError, match="largest batch bucket"):
        b.bucket_for(5)
    # A bucket larger than max_batch pads a full batch up to it.
    wide = backend(max_batch=2, buckets=(1, 4))
    for sid in ("a", "b"):
        wide.open_session(sid, PROMPT)
    assert len(run(wide, [frame("a", clip[0]), frame("b", clip[1])])) == 2


def test_any_camera_size_is_cropped_and_resized(clip):
    b = backend()
    b.open_session("a", PROMPT)
    wide = np.concatenate([clip[0], clip[1]], axis=1)[:360]  # 1024x360
    out = run(b, [frame("a", wide)])[0]
    assert out.shape == (512, 512, 3)


def test_warmup_out_of_memory_names_the_bucket(monkeypatch):
    b = backend(max_batch=4)

    def fail(frames):
        if len(frames) == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return b.__class__.submit(b, frames)

    monkeypatch.setattr(b, "submit", fail)
    with pytest.raises(WarmupOutOfMemory, match=r"batch bucket 4.*--max-batch"):
        b.warmup(lambda _msg: None)


def test_engine_config_checks_buckets_against_max_batch():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="cannot hold max_batch 8"):
        EngineConfig(max_batch=8, diffusion=DiffusionConfig(buckets=(1, 4)))
    with pytest.raises(ConfigError, match="buckets"):
        DiffusionConfig(buckets=(3,))
