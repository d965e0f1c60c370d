"""The decoder's 2x bilinear upsampling on a GPU: PyTorch's kernel on channels-last half-precision maps (as `score`
and `train` run the decoder) against exact rewrites of it, alone (forward, and forward with backward as training
runs it) and inside the scoring graph (fp16 networks, channels-last, replayed from a CUDA graph, as speed.py's rows).

    python benchmarks/upsample_gpu.py --run RUN --out upsample_gpu.txt

The rewrites (align_corners False: an output pixel is 3/4 of its nearest input pixel and 1/4 of the next one, the
borders replicated): ``nchw`` (PyTorch's kernel on a contiguous copy), ``slices`` (the two weighted sums per axis,
interleaved) and ``transposed`` (a depthwise transposed convolution with the kernel [1, 3, 3, 1] / 4 per axis on
the border-replicated map). Each is checked against F.interpolate in float32.

Diagnostic only (run by hand on a GPU machine; benchmarks/profile_gpu.txt found the upsampling slow there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # benchmarks/ is no package


def interpolate(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return interpolate(x.contiguous()).contiguous(memory_format=torch.channels_last)


def _axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    after = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    return torch.stack([0.25 * before + 0.75 * x, 0.75 * x + 0.25 * after], dim + 1).flatten(dim, dim + 1)


def slices(x: torch.Tensor) -> torch.Tensor:
    return _axis(_axis(x, 2), 3).contiguous(memory_format=torch.channels_last)


class Transposed(nn.Module):
    """2x bilinear upsampling of ``channels`` channels as a depthwise transposed convolution."""

    def __init__(self, channels: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
        kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 4, 4).contiguous()
        self.register_buffer("kernel", kernel.to(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv_transpose2d(padded, self.kernel.to(x.dtype), stride=2, padding=3, groups=x.shape[1])


class Wrapped(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def variant(name: str, channels: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if name == "transposed":
        return Transposed(channels, device, dtype)
    return Wrapped({"interpolate": interpolate, "nchw": nchw, "slices": slices}[name])


VARIANTS = ("interpolate", "nchw", "slices", "transposed")


def _ms(fn: Callable[[], object], calls: int = 50) -> float:
    """Milliseconds a call on the GPU (CUDA events), after a warm-up."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def _upsample_inputs(run: Path, size: int, batch: int) -> list[torch.Size]:
    """The input shape of each of the decoder's upsampling layers at ``size`` px, batch ``batch``."""
    graph = speed._graph(run, size, True, "cuda")
    shapes: list[torch.Size] = []
    for module in graph.scorer.model.decoder.body:
        if isinstance(module, nn.Upsample):
            module.register_forward_hook(lambda _m, inputs, _o: shapes.append(inputs[0].shape))
    with torch.no_grad():
        graph(torch.zeros(1, 3, size, size, dtype=torch.uint8, device="cuda"))
    return [torch.Size((batch, *shape[1:])) for shape in shapes]


def _alone(shapes: list[torch.Size]) -> list[str]:
    lines = []
    for shape in shapes:
        x = torch.rand(shape, device="cuda").to(memory_format=torch.channels_last)
        reference = interpolate(x)
        for name in VARIANTS:
            module = variant(name, shape[1], x.device, torch.float32)
            error = (module(x) - reference).abs().max().item()
            half = x.half().requires_grad_()
            forward = _ms(lambda m=module, h=half: m(h.detach()))
            both = _ms(lambda m=module, h=half: m(h).float().square().mean().backward())
            lines.append(
                f"{tuple(shape)} {name}: forward {forward:.3f} ms, forward + backward {both:.3f} ms, "
                f"max |difference| from interpolate (float32) {error:.1e}"
            )
            print(lines[-1], flush=True)
    return lines


def _in_graph(run: Path, size: int, batch: int) -> list[str]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    lines = []
    for name in VARIANTS:
        graph = speed._graph(run, size, True, "cuda")
        graph.scorer.model.to(memory_format=torch.channels_last)
        body = graph.scorer.model.decoder.body
        channels = None
        for index, module in enumerate(body):
            if isinstance(module, nn.Conv2d):
                channels = module.out_channels
            elif isinstance(module, nn.Upsample):
                body[index] = variant(name, channels, images.device, torch.float16)
        try:
            with torch.no_grad():
                rate = speed._rate(speed._cuda_graph(graph, images), batch, torch.cuda.synchronize)
            lines.append(f"scoring graph, batch {batch}, fp16, channels-last, CUDA graph, {name}: {rate:.0f} images/s")
        except Exception as exc:  # a variant that cannot run says why
            lines.append(f"scoring graph, {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lines = [torch.cuda.get_device_name(0)]
    lines += _alone(_upsample_inputs(args.run, args.size, args.batch))
    lines += _in_graph(args.run, args.size, args.batch)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
