"""Where the GPU time of the scoring graph goes: images/s of the graph with fp16 networks, eager and replayed as a CUDA
graph, in both memory formats, then the top CUDA kernels (torch.profiler) with channels-last networks, as `score` runs.

    python benchmarks/profile_gpu.py --run runs/bottle --size 256 --batch 32 --out profile.txt

With --parts, also what each part of the scoring costs: the replayed channels-last rate with one part changed at a
time (the nearest search in one block instead of NEAREST_BLOCK-sized ones, the image score of the fused map instead
of per component, coarse maps upsampled to full size before they are smoothed (as before resampling and smoothing
became one product per axis), no nearest search, no smoothing); the outputs of the last two are wrong, their rates
are not.

Diagnostic only (run by hand on a GPU machine); benchmarks/speed.py writes the rows RESULTS.md reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # benchmarks/ is no package

from robust_ad.scoring import scorer as scorer_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", action="store_true", help="also the rate with each part of the scoring changed")
    args = parser.parse_args()
    lines = [torch.cuda.get_device_name(0)]
    for batch in args.batch:
        lines += _profile(args.run, args.size, batch)
        print(lines[-1], flush=True)
        if args.parts:
            lines.append(_parts(args.run, args.size, batch))
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")


def _parts(run: Path, size: int, batch: int) -> str:
    """The replayed channels-last rate (fp16 networks) as it is, then with one part of the scoring changed."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    rates = {}
    parts = ("as it is", "nearest in one block", "fused-map image score", "upsampled, then smoothed", "no nearest")
    for part in (*parts, "no smoothing"):
        graph = speed._graph(run, size, True, "cuda")
        graph.scorer.model.to(memory_format=torch.channels_last)
        scorer = graph.scorer
        block = scorer_module.NEAREST_BLOCK
        if part == "nearest in one block":
            scorer_module.NEAREST_BLOCK = 2**40
        elif part == "fused-map image score":
            scorer.config = scorer.config.model_copy(update={"score_fusion": "map"})
        elif part == "no nearest":
            scorer._nearest_distance = lambda feat: feat[:, :1] * 0
        elif part == "upsampled, then smoothed":
            resample_smooth = scorer._resample_smooth
            scorer._resample_smooth = lambda maps, size, f=resample_smooth: f(scorer_module._resize(maps, size), size)
        elif part == "no smoothing":
            scorer.config = scorer.config.model_copy(update={"smoothing_sigma": 0.0})
        try:  # captured while the part is changed
            rates[part] = _try(lambda g=graph: speed._rate(speed._cuda_graph(g, images), batch, torch.cuda.synchronize))
        finally:
            scorer_module.NEAREST_BLOCK = block
    return f"batch {batch} channels-last CUDA graph images/s: " + ", ".join(f"{k} {v}" for k, v in rates.items())


def _profile(run: Path, size: int, batch: int) -> list[str]:
    """Images/s of each variant, then the kernel table of the one `score` runs (channels-last networks)."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    graph = speed._graph(run, size, True, "cuda")

    def eager() -> float:
        return speed._rate(lambda: graph(images), batch, torch.cuda.synchronize)

    def replayed() -> float:
        return speed._rate(speed._cuda_graph(graph, images), batch, torch.cuda.synchronize)

    rates = {"eager": _try(eager), "CUDA graph": _try(replayed)}
    graph.scorer.model.to(memory_format=torch.channels_last)
    rates.update({"channels-last eager": _try(eager), "channels-last CUDA graph": _try(replayed)})
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            graph(images)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    summary = f"batch {batch} images/s: " + ", ".join(f"{k} {v}" for k, v in rates.items())
    return [f"\n== fp16 networks, channels-last, batch {batch}, 5 eager calls", table, summary]


def _try(fn) -> str:
    try:
        with torch.no_grad():
            return f"{fn():.0f}"
    except Exception as exc:  # a variant that cannot run says why
        return f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


if __name__ == "__main__":
    main()
