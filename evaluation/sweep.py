"""`livestyle eval INPUT --sweep`: stylize INPUT with the real engine in file mode once per
setting of a grid, evaluate each result, and plot quality against fps."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av

from pipeline.config import ConfigError, EngineConfig

log = logging.getLogger(__name__)
SETTINGS: dict[str, tuple[str, type]] = {
    "lllite-refresh": ("lllite_refresh", int),
    "text-refresh": ("text_refresh", int),
    "adapter-strength": ("adapter_strength", float),
    "steps": ("steps", int),
    "text-mode": ("text_mode", str),
    "seed": ("seed", int),
}
"""Grid settings, named as their `livestyle stylize` flags (all DiffusionConfig fields)."""
ADAPTER_SETTINGS = ("lllite-refresh", "adapter-strength")
MAX_SETTINGS = 64


def default_grid(base: EngineConfig) -> list[str]:
    """Without --grid: the conditioning refreshes (and the adapter's, when one is loaded)."""
    grid = ["text-refresh=1,8"]
    if base.diffusion.lllite:
        grid += ["lllite-refresh=1,8", "adapter-strength=0.5,1.0"]
    return grid


def grid_configs(base: EngineConfig, texts: Sequence[str]) -> list[tuple[str, EngineConfig]]:
    """Every combination of `NAME=V1,V2,...` texts, each a validated EngineConfig; ConfigError
    (naming --grid) for an unknown name, a bad value or too many settings."""
    axes: list[list[tuple[str, str]]] = []
    for text in texts:
        name, sep, values = text.partition("=")
        name = name.strip().removeprefix("--")
        if not sep or name not in SETTINGS or not values.strip():
            raise ConfigError(
                f"--grid {text!r} is not NAME=V1,V2,...; NAME is one of {', '.join(SETTINGS)} (e.g. text-refresh=1,8)"
            )
        axes.append([(name, v.strip()) for v in values.split(",") if v.strip()])
    combos = list(itertools.product(*axes))
    if len(combos) > MAX_SETTINGS:
        raise ConfigError(f"--grid makes {len(combos)} settings; at most {MAX_SETTINGS} are allowed (use fewer values)")
    out = []
    for combo in combos:
        changes: dict[str, Any] = {}
        for name, value in combo:
            field, kind = SETTINGS[name]
            try:
                changes[field] = kind(value)
            except ValueError:
                raise ConfigError(f"--grid {name}={value!r}: not a valid {kind.__name__}") from None
        try:
            config = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, **changes))
        except ConfigError as exc:
            raise ConfigError(f"--grid {' '.join(f'{n}={v}' for n, v in combo)}: {exc}") from None
        out.append((" ".join(f"{n}={v}" for n, v in combo), config))
    if not base.diffusion.lllite and any(n in ADAPTER_SETTINGS for n, _ in combos[0]):
        log.warning("%s change nothing without an adapter (--lllite)", " and ".join(ADAPTER_SETTINGS))
    return out


def trim(source: Path, target: Path, frames: int) -> Path:
    """The first `frames` frames of `source` as a new video (a short clip for a quick sweep)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        vin = src.streams.video[0]
        rate = Fraction(vin.average_rate or 24)
        vout = cast(av.VideoStream, dst.add_stream("mpeg4", rate=rate))
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.bit_rate = 20_000_000  # near-lossless: the sweep's input should not carry coding noise
        for i, frame in enumerate(src.decode(vin)):
            if i == frames:
                break
            frame.pts, frame.time_base = i, 1 / rate
            for packet in vout.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in vout.encode():
            dst.mux(packet)
    return target
