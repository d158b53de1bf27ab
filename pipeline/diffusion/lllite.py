"""Temporal ControlNet-LLLite adapter (kohya LLLite v1 layout, "v3" checkpoint), in a
compile-friendly form fused into the UNet graph.

Each adapted host Linear (attn1.to_q/k/v, attn2.to_q) becomes
    y = host(x + m * up(mid(cat([cond, down(x)], -1))))
with `cond` and `m` read from persistent per-hook buffers of shape (max_batch, tokens, 32)
and (max_batch, 1, 1). No Python branches, no forward hooks: torch.compile traces one graph,
CUDA-graph replays read whatever was last written into the buffers, and every batch row
(a session) has its own conditioning and strength.
Checkpoint layout: ../shared/reference/lllite_v3_format.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.diffusion.streams import to_device

COND_DIM = 32
MLP_DIM = 64
COND_IMAGE = 512
KEY_PREFIX = "modules_dict."
HOST_PATTERN = re.compile(r"\.attn1\.to_[qkv]$|\.attn2\.to_q$")
BLOCK_SUBSETS = ("down_blocks", "all")


class AdapterFormatError(ValueError):
    """The file is not a temporal LLLite checkpoint for this UNet; the message says where."""


def conv_strides(feature_height: int, image: int = COND_IMAGE) -> list[int]:
    """Total stride image/feature_height, factorised greedily into 4s, then 2s."""
    total = image // feature_height
    strides = []
    while total % 4 == 0 and total > 1:
        strides.append(4)
        total //= 4
    while total % 2 == 0 and total > 1:
        strides.append(2)
        total //= 2
    if total != 1:
        raise AdapterFormatError(f"feature height {feature_height} does not divide {image} into powers of two")
    return strides


class LLLiteModule(nn.Module):
    """One adapter: conditioning CNN (image -> tokens) and the down/mid/up MLP."""

    def __init__(self, in_features: int, strides: Sequence[int], cond_dim: int = COND_DIM, mlp_dim: int = MLP_DIM):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, s in enumerate(strides):
            out = cond_dim if i == len(strides) - 1 else cond_dim // 2
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(channels, out, kernel_size=s, stride=s))
            channels = out
        self.conditioning1 = nn.Sequential(*layers)
        self.down = nn.Sequential(nn.Linear(in_features, mlp_dim), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(mlp_dim + cond_dim, mlp_dim), nn.ReLU())
        self.up = nn.Sequential(nn.Linear(mlp_dim, in_features))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 512, 512) in [-1, 1] -> (B, h * 2w, cond_dim): the block's feature map, zero
        on the reference (right) half of the width-concatenated latent."""
        e = self.conditioning1(images.to(self.up[0].weight.dtype))
        e = torch.cat([e, torch.zeros_like(e)], dim=3)
        return e.flatten(2).transpose(1, 2)

    def delta(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.up(self.mid(torch.cat([cond, self.down(x)], dim=-1)))


class AdaptedLinear(nn.Module):
    """host(x + multiplier * adapter.delta(x, cond)), cond/multiplier from persistent buffers."""

    def __init__(self, host: nn.Linear, adapter: LLLiteModule, tokens: int, max_batch: int) -> None:
        super().__init__()
        self.host = host
        self.adapter = adapter
        p = host.weight
        self.register_buffer(
            "cond", torch.zeros(max_batch, tokens, COND_DIM, dtype=p.dtype, device=p.device), persistent=False
        )
        self.register_buffer(
            "multiplier", torch.zeros(max_batch, 1, 1, dtype=p.dtype, device=p.device), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.host(x + self.multiplier[:b] * self.adapter.delta(x, self.cond[:b]))


def host_names(unet: nn.Module, blocks: str) -> list[str]:
    """The adapter sites of a UNet: every attn1.to_q/k/v and attn2.to_q Linear (108 in
    DreamLite-mobile), or only those under down_blocks (38)."""
    if blocks not in BLOCK_SUBSETS:
        raise ValueError(f"lllite blocks {blocks!r} is not known; use one of {', '.join(BLOCK_SUBSETS)}")
    names = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and HOST_PATTERN.search(n)]
    return [n for n in names if blocks == "all" or n.startswith("down_blocks.")]


def feature_heights(unet: nn.Module, names: Iterable[str], latent: int = 64) -> dict[str, int]:
    """Latent height at each site for a 512x512 frame (the width is twice that)."""
    heights = {}
    for name in names:
        part, index = name.split(".")[:2]
        level = int(index) if part != "mid_block" else None
        n_down = len(unet.down_blocks)
        if part == "down_blocks":
            heights[name] = latent >> level
        elif part == "mid_block":
            heights[name] = latent >> (n_down - 1)
        else:  # up_blocks.i runs at the resolution of down_blocks.(n-1-i)
            heights[name] = latent >> (n_down - 1 - level)
    return heights


def checkpoint_key(name: str) -> str:
    return KEY_PREFIX + name.replace(".", "__")


def expected_state(unet: nn.Module, blocks: str = "all") -> dict[str, tuple[int, ...]]:
    """Every key of a v3 checkpoint for this UNet (all 108 sites, or a subset) -> shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    names = host_names(unet, blocks)
    for name, height in feature_heights(unet, names).items():
        host = unet.get_submodule(name)
        module = LLLiteModule(host.in_features, conv_strides(height))
        for param, tensor in module.state_dict().items():
            shapes[f"{checkpoint_key(name)}.{param}"] = tuple(tensor.shape)
    return shapes


@dataclass(frozen=True)
class LoadedAdapter:
    modules: dict[str, LLLiteModule]
    """Host Linear path -> adapter, for the selected blocks."""
    metadata: dict[str, str]
    ignored_keys: int
    """Keys of sites outside the selected subset (present in the file, not used)."""


def load_adapter(path: Path, unet: nn.Module, blocks: str = "down_blocks") -> LoadedAdapter:
    """Read a v3 checkpoint and check it against this UNet: every expected key present with
    its documented shape, metadata kind temporal_lllite. Keys of unselected sites are ignored."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise AdapterFormatError(f"adapter file {path} does not exist")
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:
        raise AdapterFormatError(f"{path} is not a safetensors file: {exc}") from exc
    with handle as f:
        metadata = dict(f.metadata() or {})
        keys = set(f.keys())
        kind = metadata.get("kind")
        if kind != "temporal_lllite":
            raise AdapterFormatError(f"{path}: metadata kind is {kind!r}, expected 'temporal_lllite'")
        for field_name, value in (("cond_emb_dim", COND_DIM), ("mlp_dim", MLP_DIM)):
            if field_name in metadata and int(metadata[field_name]) != value:
                raise AdapterFormatError(f"{path}: {field_name} is {metadata[field_name]}, expected {value}")
        full = expected_state(unet, "all")
        unknown = sorted(keys - set(full))
        if unknown:
            raise AdapterFormatError(f"{path}: {len(unknown)} keys do not belong to this UNet, e.g. {unknown[0]}")
        names = host_names(unet, blocks)
        heights = feature_heights(unet, names)
        modules: dict[str, LLLiteModule] = {}
        used = 0
        for name in names:
            host = unet.get_submodule(name)
            module = LLLiteModule(host.in_features, conv_strides(heights[name]))
            state = {}
            for param, tensor in module.state_dict().items():
                key = f"{checkpoint_key(name)}.{param}"
                if key not in keys:
                    raise AdapterFormatError(f"{path}: missing key {key}")
                value = f.get_tensor(key)
                if tuple(value.shape) != tuple(tensor.shape):
                    raise AdapterFormatError(
                        f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}"
                    )
                state[param] = value
                used += 1
            module.load_state_dict(state)
            modules[name] = module
    return LoadedAdapter(modules, metadata, ignored_keys=len(keys) - used)


def synthesize_checkpoint(unet: nn.Module, path: Path, seed: int = 0, scale: float = 0.02) -> int:
    """Write a checkpoint with the documented v3 layout and random weights for this UNet
    (tests and benchmarks: the published file is not downloadable here). Returns the
    number of modules (sites)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {
        key: (torch.randn(shape, generator=gen) * scale).float().contiguous()
        for key, shape in expected_state(unet, "all").items()
    }
    sites = len(host_names(unet, "all"))
    metadata = {
        "kind": "temporal_lllite",
        "cond_emb_dim": str(COND_DIM),
        "mlp_dim": str(MLP_DIM),
        "step": "0",
        "model": "synthetic",
    }
    save_file(tensors, str(path), metadata=metadata)
    return sites


class AdapterBank:
    """The installed adapters of one UNet: buffers, conditioning embeddings, strengths."""

    def __init__(self, unet: nn.Module, loaded: LoadedAdapter, max_batch: int, latent: int = 64) -> None:
        p = next(unet.parameters())
        heights = feature_heights(unet, loaded.modules, latent)
        self.sites: list[AdaptedLinear] = []
        self.names: list[str] = []
        for name, module in loaded.modules.items():
            module.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name)
            host = getattr(parent, child)
            if isinstance(host, AdaptedLinear):
                raise ValueError(f"{name} already has an adapter")
            tokens = heights[name] * heights[name] * 2
            wrapped = AdaptedLinear(host, module, tokens, max_batch)
            setattr(parent, child, wrapped)
            self.sites.append(wrapped)
            self.names.append(name)
        self.tokens = [s.cond.shape[1] for s in self.sites]

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, 512, 512) in [-1, 1] -> per site (B, tokens, 32): run the conditioning CNNs
        of the active sites only (the refresh)."""
        return [s.adapter.embed(images) for s in self.sites]

    def write_rows(self, per_row: Sequence[Sequence[torch.Tensor]], strengths: Sequence[float]) -> None:
        """Refresh the buffers in place for a batch: per_row[i] is row i's per-site embedding
        list (from embed), strengths[i] its multiplier. Rows past len(per_row) keep whatever
        they held (padding rows; their results are dropped)."""
        b = len(per_row)
        dst = [s.cond[:b] for s in self.sites]
        src = [torch.stack([row[k] for row in per_row]) for k in range(len(self.sites))]
        torch._foreach_copy_(dst, src)
        m = torch.tensor(strengths, dtype=self.sites[0].multiplier.dtype).view(b, 1, 1)
        m = to_device(m, self.sites[0].multiplier.device)  # pinned: no blocking copy in a step
        for s in self.sites:
            s.multiplier[:b].copy_(m)

    def remove(self, unet: nn.Module) -> None:
        for name, site in zip(self.names, self.sites, strict=True):
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name), child, site.host)
