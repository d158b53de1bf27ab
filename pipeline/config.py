"""Engine configuration: a frozen dataclass validated on construction.

Built by server/config.py (the only code that reads CLI and environment); the
engine itself never looks at argv or os.environ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EngineKind = Literal["auto", "diffusion", "preview"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "diffusion", "preview")
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)


TextMode = Literal["every", "refresh", "once", "prompt"]
TEXT_MODES: tuple[str, ...] = ("every", "refresh", "once", "prompt")
COMPILE_MODES: tuple[str, ...] = ("auto", "reduce-overhead", "precompile", "aot", "default", "none")
CHANNELS_LAST_CHOICES: tuple[str, ...] = ("off", "vae", "all")
FP8_CHOICES: tuple[str, ...] = ("off", "linear")
INDUCTOR_CHOICES: tuple[str, ...] = ("conv1x1_mm", "coordinate_descent", "no_epilogue_fusion")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says what was given and what is."""


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the diffusion engine (ignored by the preview engine)."""

    steps: int = 1
    """Flow-matching Euler steps per frame, 1..4 (the model is distilled for 4; 1 is the
    streaming operating point)."""
    text_mode: TextMode = "refresh"
    """When the vision-aware text encoder runs for a session: 'every' step (the paper),
    'refresh' every `text_refresh` steps and on a prompt change, 'once' per prompt (from the
    first frame after the change), or 'prompt' (text only, no image; cached per prompt)."""
    text_refresh: int = 8
    """Steps between text-encoder refreshes in 'refresh' mode."""
    text_image_size: int = 256
    """Side of the frame the text encoder sees (the paper: 256; diffusers' pipeline: 512)."""
    text_tokens: int = 256
    """Fixed text-encoder sequence length (static shapes); the first 64 (system prompt) are
    dropped, the rest condition the UNet. Prompts that do not fit are refused."""
    representative_frame: bool = True
    """In clip mode (B frames of one stream), encode one frame per refresh instead of all B."""
    seed: int = 0
    """Seed of each session's fixed noise."""
    prompt_blend: int = 4
    """Steps (frames) over which a new prompt blends in: the conditioning goes from the old
    prompt's to the new one's in equal parts, the first pure frame after that; 0 = switch
    at once."""
    compile: str = "auto"
    """torch.compile of the UNet+decode graph: 'reduce-overhead' (CUDA graphs),
    'precompile' (the same graph saved per bucket in compile_cache_dir by dynamo's
    precompile, CUDA-graphed: a cached start loads it without tracing), 'aot'
    (AOTInductor packages there, likewise), 'default', 'none', or 'auto' (reduce-overhead
    on CUDA, none on CPU). precompile and aot also compile on the CPU."""
    buckets: tuple[int, ...] | None = None
    """Batch sizes compiled at warm-up (static shapes: ~1.5 minutes each on an H100, and 30%
    faster than one batch-dynamic graph). A step pads its batch up to the smallest bucket
    that holds it. None = every size in 1, 2, 4, 8, 16 up to max_batch."""
    lllite: str | None = None
    """Path of a temporal ControlNet-LLLite checkpoint (v3 layout); None = no adapter."""
    lllite_blocks: str = "down_blocks"
    """Adapter sites: 'down_blocks' (38 modules) or 'all' (108)."""
    lllite_refresh: int = 8
    """Steps between adapter conditioning refreshes (also at once on a scene cut or a new prompt)."""
    adapter_strength: float = 1.0
    """Initial adapter multiplier of a session (0..1.5; the adapter was trained at 1.0)."""
    scene_cut_threshold: float = 0.3
    """Bhattacharyya distance of consecutive frames' colour histograms that counts as a cut."""
    revision: str | None = "diffusers"
    """Hugging Face revision of the model repository (None for a local directory's files)."""
    # ---- speed switches (diffusion-perf); each checked by `python -m bench.gpu_check` ----
    text_length_step: int = 32
    """Text-encoder sequence lengths come in steps of this many tokens after the 64-token
    system prefix (a batch runs at the smallest that holds its longest prompt; one CUDA
    graph per length and batch bucket); 0 = always text_tokens (the fixed layout)."""
    text_prefix_cache: bool = True
    """Compute the system prefix's keys/values once and run the language model on the
    tokens after it only (exact: causal attention, plain position ids there)."""
    text_compile: bool = False
    """torch.compile the text encoder's decoder layer (one graph for all 28 layers and every
    shape; needs text_prefix_cache)."""
    channels_last: str = "vae"
    """Channels-last weights: 'off', 'vae' (TAESD encoder/decoder) or 'all' (also the UNet)."""
    fuse_qkv: bool = False
    """Fused attention projections in the UNet (q/k/v of self-attention, k/v of cross-attention)."""
    fp8: str = "off"
    """'linear': the UNet transformer blocks' large linear layers as FP8 (E4M3) products
    with row-wise scales (pipeline/diffusion/fp8.py; needs a GPU with FP8 tensor cores for
    speed); 'off': bf16 throughout."""
    inductor: tuple[str, ...] = ("conv1x1_mm",)
    """Inductor switches for the UNet graph: conv1x1_mm, coordinate_descent (longer first
    compile), no_epilogue_fusion."""
    stream_priorities: bool = True
    """Run the UNet stream at a higher CUDA priority than the side and text streams."""
    compile_cache_dir: str | None = "~/.cache/livestyle/compile"
    """Where compiled artifacts persist between starts (inductor, Triton, torch.compile's
    mega-cache); None = inductor's default temporary directory only."""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 4:
            raise ConfigError(f"steps {self.steps} is not allowed; use 1..4")
        if self.text_mode not in TEXT_MODES:
            raise ConfigError(f"text_mode {self.text_mode!r} is not known; use one of {', '.join(TEXT_MODES)}")
        if not 1 <= self.text_refresh <= 1000:
            raise ConfigError(f"text_refresh {self.text_refresh} is not allowed; use 1..1000")
        if not 0 <= self.prompt_blend <= 120:
            raise ConfigError(f"prompt_blend {self.prompt_blend} is not allowed; use 0..120 (--prompt-blend)")
        if self.text_image_size % 32 or not 64 <= self.text_image_size <= 1024:
            raise ConfigError(
                f"text_image_size {self.text_image_size} is not allowed; use a multiple of 32 from 64 to 1024"
            )
        if not 96 <= self.text_tokens <= 2048:
            raise ConfigError(f"text_tokens {self.text_tokens} is not allowed; use 96..2048")
        if self.buckets is not None and (not self.buckets or any(b not in BATCH_BUCKETS for b in self.buckets)):
            raise ConfigError(f"buckets {self.buckets} are not allowed; use a non-empty subset of {BATCH_BUCKETS}")
        if self.lllite_blocks not in ("down_blocks", "all"):
            raise ConfigError(f"lllite_blocks {self.lllite_blocks!r} is not known; use down_blocks or all")
        if not 1 <= self.lllite_refresh <= 1000:
            raise ConfigError(f"lllite_refresh {self.lllite_refresh} is not allowed; use 1..1000")
        if not 0.0 <= self.adapter_strength <= 1.5:
            raise ConfigError(f"adapter_strength {self.adapter_strength} is not allowed; use 0..1.5")
        if not 0.0 < self.scene_cut_threshold < 1.0:
            raise ConfigError(f"scene_cut_threshold {self.scene_cut_threshold} is not allowed; use (0, 1)")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile {self.compile!r} is not known; use one of {', '.join(COMPILE_MODES)}")
        if not 0 <= self.text_length_step <= 512:
            raise ConfigError(
                f"text_length_step {self.text_length_step} is not allowed; use 0..512 (--text-length-step)"
            )
        if self.text_compile and not self.text_prefix_cache:
            raise ConfigError("text_compile needs text_prefix_cache (--text-compile with --text-prefix-cache 1)")
        if self.channels_last not in CHANNELS_LAST_CHOICES:
            raise ConfigError(
                f"channels_last {self.channels_last!r} is not known; use one of "
                f"{', '.join(CHANNELS_LAST_CHOICES)} (--channels-last)"
            )
        if self.fp8 not in FP8_CHOICES:
            raise ConfigError(f"fp8 {self.fp8!r} is not known; use one of {', '.join(FP8_CHOICES)} (--fp8)")
        unknown = [s for s in self.inductor if s not in INDUCTOR_CHOICES]
        if unknown:
            raise ConfigError(
                f"inductor switch(es) {', '.join(unknown)} not known; use any of {', '.join(INDUCTOR_CHOICES)} "
                "(--inductor, comma-separated; 'none' for none)"
            )


@dataclass(frozen=True)
class EngineConfig:
    kind: EngineKind = "auto"
    """Which engine: 'diffusion' (GPU model), 'preview' (CPU filter) or 'auto' (diffusion
    when CUDA is present and the weights resolve, else preview)."""
    model: str = "carlofkl/DreamLite-mobile"
    """Hugging Face repo id or local directory of the diffusion model; 'tiny' builds tiny
    random components in code (smoke tests, no network)."""
    max_batch: int = 8
    """Most frames stylized in one engine step (one per session); one of 1, 2, 4, 8, 16."""
    size: int = 512
    """Output frame side in pixels (square)."""
    max_prompt_chars: int = 500
    """Longest prompt accepted, in characters (the diffusion engine also checks tokens)."""
    device: str = "auto"
    """Torch device for the diffusion engine: 'auto', 'cuda', 'cuda:N' or 'cpu'."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Diffusion engine settings."""

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ConfigError(f"engine {self.kind!r} is not known; use one of {', '.join(ENGINE_KINDS)}")
        if self.max_batch not in BATCH_BUCKETS:
            raise ConfigError(
                f"max_batch {self.max_batch} is not allowed; use one of {', '.join(map(str, BATCH_BUCKETS))}"
            )
        if self.size % 64 != 0 or not 128 <= self.size <= 1024:
            raise ConfigError(f"size {self.size} is not allowed; use a multiple of 64 from 128 to 1024")
        if not 1 <= self.max_prompt_chars <= 4000:
            raise ConfigError(f"max_prompt_chars {self.max_prompt_chars} is not allowed; use 1..4000")
        if not self.model.strip():
            raise ConfigError("model must not be empty; give a Hugging Face id, a local directory or 'tiny'")
        if self.diffusion.buckets is not None and max(self.diffusion.buckets) < self.max_batch:
            raise ConfigError(
                f"the largest bucket {max(self.diffusion.buckets)} cannot hold max_batch {self.max_batch}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device {self.device!r} is not allowed; use auto, cpu, cuda or cuda:N")
