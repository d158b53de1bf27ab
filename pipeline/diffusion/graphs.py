"""Manual CUDA-graph capture for the eager stages that run on the side stream (text
encoder, VAE encoder): their Python launch cost (hundreds of kernels) would otherwise be
paid on the engine thread every step. torch.compile's CUDA graphs serve the main-stream
UNet graph; these are plain torch.cuda.CUDAGraph captures with static input buffers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class GraphedCall:
    """fn(*inputs) -> Tensor, captured once for fixed input shapes. A call copies the new
    inputs into the static buffers and replays on the current stream; the returned tensor
    is the graph's static output: consume or copy it before the next call."""

    def __init__(self, fn: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor]) -> None:
        self.inputs = [t.clone() for t in example_inputs]
        capture_stream = torch.cuda.Stream()
        capture_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(capture_stream), torch.inference_mode():
            for _ in range(2):  # lazy init (cuBLAS handles, autotuned kernels) before capture
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(capture_stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(self.inputs, inputs, strict=True):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.output
