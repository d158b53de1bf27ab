"""Upload and preparation of a step's frames (side stream): pinned staging buffers,
centre crop on the host (only the square travels), resize on the device, padding to the
batch bucket."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.diffusion.stages import host_crop, square_frame
from pipeline.diffusion.streams import StreamSet, to_device
from pipeline.messages import FrameIn

STAGING_BYTES = 1024 * 1024 * 3
"""Host frames larger than this skip the staging buffer (rare: the signaling layer
already scales camera frames to a 512 short side); they are pinned on the fly."""
RING = 3
"""Staging/output buffers in rotation: one filling, one in flight, one being read."""


class FrameUploader:
    def __init__(self, streams: StreamSet, device: torch.device, size: int, max_batch: int) -> None:
        self.streams = streams
        self.device = device
        self.size = size
        pin = streams.cuda
        self._staging = [
            torch.empty((max_batch, STAGING_BYTES), dtype=torch.uint8, pin_memory=pin) for _ in range(RING)
        ]
        self._free: list[torch.cuda.Event | None] = [None] * RING

    def upload(self, frames: Sequence[FrameIn], slot: int, bucket: int) -> torch.Tensor:
        """Host frames -> (bucket, 3, S, S) float [0, 255] on the device (current stream),
        padded to the bucket by repeating the last frame."""
        staging = self._staging[slot]
        pending = self._free[slot]
        if pending is not None:
            pending.synchronize()  # the DMA that last read this buffer (RING steps ago) must be done
        squares = []
        for i, frame in enumerate(frames):
            crop = host_crop(frame.image)
            n = crop.size
            if n <= STAGING_BYTES:
                np.copyto(staging[i, :n].numpy().reshape(crop.shape), crop)
                src = staging[i, :n].view(crop.shape).to(self.device, non_blocking=True)
            else:
                src = to_device(torch.from_numpy(np.ascontiguousarray(crop)), self.device)
            squares.append(square_frame(src, self.size))
        self._free[slot] = self.streams.record(blocking=True)
        squares += [squares[-1]] * (bucket - len(squares))
        return torch.stack(squares)

    def noise(self, seed: int, latent: int, dtype: torch.dtype) -> torch.Tensor:
        """A session's fixed (1, 4, latent, latent) noise, on the side stream (the stream
        that reads it: no cross-stream lifetime). Drawn on the CPU like diffusers'
        randn_tensor with a CPU generator, so a session with seed s sees the noise of
        pipeline(..., generator=Generator().manual_seed(s))."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, 4, latent, latent), generator=gen, dtype=dtype)
        with self.streams.on_side():
            return to_device(noise, self.device)
