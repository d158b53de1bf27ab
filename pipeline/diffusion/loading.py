"""Model loading: a Hugging Face id or a local directory through diffusers'
DreamLiteMobilePipeline.from_pretrained, or 'tiny' random components built in code.

Everything that decides whether a model can load (the reference, the folder's parts, the
cache, the Hub) runs without torch and without reading weights, so a bad `--model` is
refused before the server binds or a file is touched. Every failure is a ModelLoadError
that names the part and the remedy."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

TINY = "tiny"
RANDOM_PREFIX = "random:"
"""random:DIR builds the full-size architectures from the reference config JSONs in DIR
with random weights (benchmarks: speed does not depend on weight values)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_TIMEOUT_S = 10.0
"""How long the start-up look-up of a Hub repository may take (it runs before the bind)."""
PROGRESS_EVERY_S = 2.0


class ModelLoadError(RuntimeError):
    pass


def is_hub_id(model: str) -> bool:
    """'owner/name' that is not an existing path (and not one of our in-code models)."""
    if model == TINY or model.startswith(RANDOM_PREFIX) or model.startswith((".", "/", "~")):
        return False
    return not Path(model).expanduser().exists() and model.count("/") == 1


def download_command(model: str, revision: str | None, local_dir: Path | None = None) -> str:
    rev = f" --revision {revision}" if revision else ""
    to = f" --local-dir {local_dir}" if local_dir is not None else ""
    return f"hf download {model}{rev}{to}"


def remedies(model: str, revision: str | None) -> str:
    if is_hub_id(model):
        fetch = (
            f"download the weights first (`{download_command(model, revision)}`) or pass a local directory with --model"
        )
    else:
        fetch = "check that --model points at a diffusers model directory (with model_index.json) or give a Hub id"
    return (
        f"Remedies: {fetch}; set HF_TOKEN if the repository needs a login; or run the CPU preview with "
        "--engine preview (or --model tiny for a smoke test with random weights)."
    )


def check_reference(model: str) -> None:
    """Refuse a --model that can never load, before any work: a path that does not exist, a
    random:DIR without the reference configs, or something that is neither a path nor a Hub id."""
    allowed = (
        "give a diffusers model folder (with model_index.json), a Hugging Face id such as "
        "carlofkl/DreamLite-mobile, 'tiny' (random tiny model, smoke tests) or random:DIR (LIVESTYLE_MODEL)"
    )
    if model == TINY:
        return
    if model.startswith(RANDOM_PREFIX):
        ref = Path(model[len(RANDOM_PREFIX) :]).expanduser()
        if not (ref / "dreamlite_mobile_unet_config.json").is_file():
            raise ConfigError(
                f"--model {model}: {ref} has no dreamlite_mobile_unet_config.json; point random: at the folder of "
                "reference configs (../shared/reference in this project's checkout)"
            )
        return
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--model {model} is a file, not a model folder; {allowed}")
        return
    if not is_hub_id(model):
        raise ConfigError(f"--model {model}: no such directory; {allowed}")


def _check_safetensors(file: Path) -> str | None:
    """Why a .safetensors file is not whole (None when it is): reads only its header."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(64)
        if head.startswith(b"version https://git-lfs"):
            return "is a Git LFS pointer, not the weights (the repository was cloned without git-lfs)"
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        length = int.from_bytes(head[:8], "little")
        if length > size - 8:
            return f"is truncated or corrupt ({size} bytes, its header claims {length})"
        f.seek(8)
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            return "is corrupt (its header does not parse)"
    if 8 + length + end != size:
        return f"is truncated or corrupt ({size} bytes, its header describes {8 + length + end})"
    return None


def _check_part(folder: Path) -> str | None:
    """Why one component folder cannot load (None when it looks whole)."""
    if not folder.is_dir():
        return f"the folder {folder.name}/ is missing"
    for file in sorted(folder.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"{folder.name}/{file.name} is not valid JSON"
    weights = [f for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES]
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        weights += [folder / s for s in sorted(shards) if (folder / s) not in weights]
    if (folder / "config.json").is_file() and not weights:
        return f"{folder.name}/ has a config.json but no weights (*.safetensors)"
    for file in weights:
        if not file.is_file():
            return f"{folder.name}/{file.name} is missing"
        if file.suffix == ".safetensors" and (problem := _check_safetensors(file)) is not None:
            return f"{folder.name}/{file.name} {problem}"
    return None


def check_model_dir(path: Path, remedy: str) -> None:
    """Cheap integrity check of a diffusers model folder before anything loads: model_index.json
    parses and names the parts; each part's folder exists, its JSON files parse and its weight
    files are whole. Raises ModelLoadError naming the first broken part and `remedy`."""

    def fail(what: str) -> ModelLoadError:
        return ModelLoadError(f"the model in {path} cannot load: {what}. {remedy}")

    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise fail("model_index.json is missing (this is not a diffusers model folder)")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise fail("model_index.json is not valid JSON") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise fail("model_index.json has no _class_name (not a diffusers pipeline index)")
    parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    if not parts:
        raise fail("model_index.json names no components")
    for part in parts:
        if (problem := _check_part(path / part)) is not None:
            raise fail(f"part '{part}': {problem}")


def cached_snapshot(model: str, revision: str | None) -> tuple[Path | None, str]:
    """The Hugging Face cache's copy of a repository (no network): (path, '') or (None, why not)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "huggingface_hub is not installed"
    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True)), ""
    except Exception as exc:  # noqa: BLE001 - any miss means "not cached"
        return None, f"{model} is not in the Hugging Face cache ({type(exc).__name__})"


def probe_hub(model: str, revision: str | None) -> tuple[bool, str]:
    """Whether the Hub serves this repository now: (True, size to download) or (False, why not).
    One metadata request with a short timeout; the download itself happens on the engine thread."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.constants import is_offline_mode
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        return False, "huggingface_hub is not installed"
    if is_offline_mode():
        return False, f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        info = HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S, files_metadata=True)
    except GatedRepoError:
        return False, f"{model} is gated: accept its terms on the Hub and set HF_TOKEN"
    except RevisionNotFoundError:
        return False, f"{model} has no revision {revision!r}"
    except RepositoryNotFoundError:
        return False, f"{model} does not exist on the Hub (or is private: set HF_TOKEN)"
    except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy, 5xx: all mean "cannot download now"
        return False, f"the Hugging Face Hub cannot be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    total = sum(s.size or 0 for s in info.siblings or [])
    return True, f"{_gigabytes(total)} to download"


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _reporting_bar(progress: Callable[[str], None], model: str) -> type:
    """A tqdm class for huggingface_hub that prints nothing and reports byte counts through
    `progress`, at most every PROGRESS_EVERY_S per bar (huggingface_hub keeps two byte bars,
    transfer and reconstruction, that often say the same: repeats are dropped)."""
    from tqdm.std import tqdm

    last = [""]

    class _Silent:
        def write(self, _text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    class ReportingBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(disable=False, file=_Silent(), mininterval=PROGRESS_EVERY_S)
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if self.unit == "B" and self.n and self.total:
                message = f"downloading {model}: {_gigabytes(self.n)} of {_gigabytes(self.total)}"
                if message != last[0]:
                    last[0] = message
                    progress(message)
            return True

    return ReportingBar


def download(model: str, revision: str | None, progress: Callable[[str], None]) -> Path:
    """Fetch a Hub repository into the Hugging Face cache (resuming a partial one), reporting
    the bytes through `progress`. Runs on the engine thread, after the server is listening."""
    from huggingface_hub import snapshot_download

    progress(f"downloading {model} (revision {revision}) into the Hugging Face cache")
    try:
        path = snapshot_download(model, revision=revision, tqdm_class=_reporting_bar(progress, model))
    except Exception as exc:
        raise ModelLoadError(
            f"downloading {model} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            + remedies(model, revision)
        ) from exc
    progress(f"downloaded {model}")
    return Path(path)


@dataclass(frozen=True)
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    processor: Any
    """Qwen3VLProcessor (only the naive-pipeline baseline needs it)."""


def load_components(model: str, revision: str | None, device: Any, dtype: Any) -> Components:
    """Build or load the model stack on `device` in `dtype`. A Hub id not in the cache is
    downloaded by diffusers here (the server downloads first, see pipeline/engines.py)."""
    if model == TINY:
        from pipeline.diffusion.tiny import build_tiny_components

        tiny = build_tiny_components(0)
        components = Components(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler, tiny.processor)
    elif model.startswith(RANDOM_PREFIX):
        components = build_reference_sized(device, dtype, Path(model[len(RANDOM_PREFIX) :]).expanduser())
    else:
        components = _from_pretrained(model, revision, dtype)
    for module in (components.unet, components.vae, components.text_encoder):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return components


def _from_pretrained(model: str, revision: str | None, dtype: Any) -> Components:
    from diffusers import DreamLiteMobilePipeline

    path = Path(model).expanduser()
    is_dir = path.is_dir()
    if is_dir:
        check_model_dir(path, local_remedy(path))
    try:
        pipe = DreamLiteMobilePipeline.from_pretrained(
            str(path) if is_dir else model, revision=None if is_dir else revision, dtype=dtype
        )
    except Exception as exc:
        part = _failed_part(exc)
        raise ModelLoadError(
            f"could not load the diffusion model {model!r}{f': part {part!r}' if part else ''}: "
            f"{type(exc).__name__}: {str(exc)[:500]}. " + (local_remedy(path) if is_dir else remedies(model, revision))
        ) from exc
    tokenizer = getattr(pipe.processor, "tokenizer", None) or pipe.tokenizer
    return Components(pipe.unet, pipe.vae, pipe.text_encoder, tokenizer, pipe.scheduler, pipe.processor)


def _failed_part(exc: BaseException) -> str | None:
    """The pipeline component diffusers was loading when `exc` was raised (its loader's frame
    holds the name), so the message can say which part of the folder is wrong."""
    tb = exc.__traceback__
    part = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "load_sub_model":
            part = tb.tb_frame.f_locals.get("name")
        tb = tb.tb_next
    return part if isinstance(part, str) else None


def local_remedy(path: Path) -> str:
    return (
        "Remedy: download the model again into that folder "
        f"(`{download_command('carlofkl/DreamLite-mobile', 'diffusers', path)}`), or point --model at a complete copy."
    )


def cache_remedy(model: str, revision: str | None, path: Path) -> str:
    """For a broken snapshot in the Hugging Face cache: fetch it again."""
    repo_dir = path.parent.parent if path.parent.name == "snapshots" else path
    return (
        f"Remedy: `{download_command(model, revision)}` fetches the missing files again "
        f"(or delete {repo_dir} and let livestyle download it)."
    )


def build_reference_sized(device: Any, dtype: Any, reference_dir: Path) -> Components:
    """Full-size DreamLite-mobile UNet and Qwen3-VL-2B from the reference configs, with random
    weights (speed does not depend on weight values), plus the tiny tokenizer (padded to the real
    vocabulary's special ids) - for GPU benchmarks where the real weights are not available."""
    import torch
    from diffusers import AutoencoderTiny, DreamLiteUNetModel
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from pipeline.diffusion.tiny import build_tiny_processor, build_tiny_scheduler

    unet_cfg = json.loads((reference_dir / "dreamlite_mobile_unet_config.json").read_text())
    te_cfg = json.loads((reference_dir / "qwen3_vl_2b_text_encoder_config.json").read_text())
    with torch.device(device):
        unet = DreamLiteUNetModel.from_config(unet_cfg)
        vae = AutoencoderTiny(latent_channels=4)
        te = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**te_cfg))
    processor = build_tiny_processor()
    tokenizer = processor.tokenizer
    for module in (unet, vae, te):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # The tiny tokenizer's ids are small; map its special tokens onto the real ids the config names.
    te.config.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return Components(unet, vae, te, tokenizer, build_tiny_scheduler(), processor)


__all__ = [
    "Components",
    "ModelLoadError",
    "cache_remedy",
    "cached_snapshot",
    "check_model_dir",
    "check_reference",
    "download",
    "is_hub_id",
    "load_components",
    "local_remedy",
    "probe_hub",
    "remedies",
]
