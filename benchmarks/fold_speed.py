"""What folding the batch norms into the convolutions changes: the scoring graph with and without it, torch
channels-last (what `score` runs) at batch 1 and 32, and onnxruntime at batch 1, on this machine's CPU.

    python benchmarks/fold_speed.py --run benchmarks/results/runs/bottle-eps1 --size 256

Prints one JSON line per (engine, batch) with ms per image unfolded and folded, measured alternately (REPEATS
rounds, the best of each) so that a shared machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import speed  # benchmarks/ is no package: run from the repository root as above
import torch

from robust_ad import api, export

REPEATS = 2


def _folding(fold: bool):
    """The export module folding batch norms as it does (``fold``), or leaving them (a stand-in that folds none)."""
    return mock.patch.object(export, "fold_batch_norms", export.fold_batch_norms if fold else lambda module: 0)


def _graphs(run: Path, size: int) -> dict[bool, export.ScoringGraph]:
    graphs = {}
    for fold in (False, True):
        with _folding(fold):
            graphs[fold] = speed._graph(run, size, False, "cpu")
        graphs[fold].scorer.model.to(memory_format=torch.channels_last)
    return graphs


def _onnx(run: Path, size: int, folder: Path) -> dict[bool, Path]:
    paths = {}
    for fold in (False, True):
        paths[fold] = folder / f"{fold}.onnx"
        with _folding(fold):
            api.export(run, paths[fold], size=(size, size), verify=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    graphs = _graphs(args.run, args.size)
    with tempfile.TemporaryDirectory() as work:
        onnx = _onnx(args.run, args.size, Path(work))
        cases = {}
        for batch in (1, 32):
            x = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)
            for fold, graph in graphs.items():
                cases[("torch, channels-last", batch, fold)] = (lambda g=graph, x=x: g(x), batch)
        images = np.random.default_rng(0).integers(0, 256, (1, 3, args.size, args.size), dtype=np.uint8)
        for fold, path in onnx.items():
            cases[("onnxruntime", 1, fold)] = (None, path)
        best: dict[tuple, float] = {}
        for _ in range(REPEATS):
            for key, (fn, arg) in cases.items():
                if fn is None:
                    rate = speed._onnx_rate(arg, images, "CPUExecutionProvider")
                else:
                    with torch.no_grad():
                        rate = speed._rate(fn, arg)
                best[key] = max(best.get(key, 0.0), rate)
    for engine, batch in dict.fromkeys((e, b) for e, b, _ in best):
        row = {"engine": engine, "size": args.size, "batch": batch}
        row.update({f"ms_{'folded' if f else 'unfolded'}": round(1000 / best[(engine, batch, f)], 2) for f in (0, 1)})
        print(json.dumps(row))


if __name__ == "__main__":
    main()
