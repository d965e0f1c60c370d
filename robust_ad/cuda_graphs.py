"""CUDA graph replay: a module's forward pass captured once per input shape and replayed.

Eager inference on a GPU launches each of the scoring graph's hundreds of kernels from Python; at small batches
the launches, not the arithmetic, set the time (256 px, batch 1, H200: 3.4 ms eager, 0.86 ms replayed;
benchmarks/RESULTS.md). A CUDA graph records the launches once and replays them in one call. The module must not
copy from the host or synchronise inside its forward pass (robust_ad's scorer and exported graphs do neither).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

WARMUP_CALLS = 3  # eager calls before a capture: lazy allocations, cuDNN algorithm choice, cached constants


class GraphedForward:
    """``module(x)`` for CUDA tensors, replayed from a CUDA graph captured at the first input of each shape.

    Returns the module's outputs as a tuple of fresh tensors (the graph's own output buffers are overwritten by
    the next replay). Shapes are kept apart: give it a fixed batch shape (pad the last batch) to capture once.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.failed = False
        self.graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self.state = buffer_state(module)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.failed:
            return self._eager(x)
        if (state := buffer_state(self.module)) != self.state:  # e.g. recalibrated: captured again
            self.graphs.clear()
            self.state = state
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(x)
            except RuntimeError as exc:  # an operation the capture refuses: correct results, launch-bound
                log.warning("CUDA graph capture failed, running eagerly: %s", str(exc).splitlines()[0])
                self.failed = True
                return self._eager(x)
        static_input, graph, static_outputs = self.graphs[key]
        static_input.copy_(x)
        graph.replay()
        return tuple(t.clone() for t in static_outputs)

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _as_tuple(self.module(x))

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]:
        static_input = x.clone()
        side = torch.cuda.Stream(device=x.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.module(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.module(static_input)
        return static_input, graph, _as_tuple(outputs)


def buffer_state(module: nn.Module) -> tuple[int, ...]:
    """Where ``module``'s own buffers are: a buffer replaced by another tensor (a memory bank of a new length,
    statistics resampled or dropped, the module moved) changes it, and a graph captured before would read the
    freed tensor. Buffers updated in place keep their place, and graphs see their new values."""
    return tuple(buffer.data_ptr() for buffer in module.buffers(recurse=False))


def _as_tuple(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)
