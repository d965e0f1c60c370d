"""Score-component subsets, nearest-bank sizes and nearest's vectors on trained runs, each recalibrated (no
retraining): how the `nearest` component was chosen (benchmarks/FINDINGS.md, "New score component"). Prints one
JSON line per run and setting.

    python benchmarks/nearest_probe.py benchmarks/results/score-weights/runs/{bottle,fabric,gravel}-eps{0,1}
    python benchmarks/nearest_probe.py benchmarks/results/score-weights/runs/*-eps1 --banks 1024 4096 100000
    python benchmarks/nearest_probe.py RUNS --features layer1/1 layer1/3 layer1+layer2/3

--features LAYERS/POOL: nearest's layers (joined by '+') and neighbourhood, nearest alone and all five fused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import _component_rows, recalibrated_detection  # benchmarks/ is no package: the modules sit side by side

from robust_ad.config import COMPONENTS

SUBSETS = ["pixel+ssim+feature+memory", "pixel+ssim+feature+memory+nearest", "nearest", "memory+nearest"]


def _feature_rows(run: Path, features: list[str]) -> list[dict]:
    """Image AUROC with nearest's vectors set by each LAYERS/POOL of ``features``: nearest alone, then all fused."""
    chosen = [(feature, fused) for feature in features for fused in (False, True)]
    updates = []
    for feature, fused in chosen:
        layers, pool = feature.split("/")
        weights = {c: float(fused or c == "nearest") for c in COMPONENTS}
        updates.append({"weights": weights, "nearest_layers": layers.split("+"), "nearest_pool": int(pool)})
    return [
        {"components": "all" if fused else "nearest", "features": feature, "image_auroc": metrics["image_auroc"]}
        for (feature, fused), (_, metrics) in zip(chosen, recalibrated_detection(run, updates), strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--subsets", nargs="+", default=SUBSETS, help="components joined by '+'")
    parser.add_argument("--banks", type=int, nargs="+", help="instead: 'nearest' alone at each bank size")
    parser.add_argument("--features", nargs="+", help="instead: nearest's LAYERS/POOL, alone and fused")
    args = parser.parse_args()
    alone = {"weights": {c: float(c == "nearest") for c in COMPONENTS}}
    for run in args.runs:
        if args.features:
            rows = _feature_rows(run, args.features)
        elif args.banks:
            updates = [{**alone, "nearest_bank": bank} for bank in args.banks]
            rows = [
                {"components": "nearest", "nearest_bank": bank, "image_auroc": metrics["image_auroc"]}
                for bank, (_, metrics) in zip(args.banks, recalibrated_detection(run, updates), strict=True)
            ]
        else:
            rows = _component_rows(run, [subset.split("+") for subset in args.subsets])
        for row in rows:
            keys = ("components", "nearest_bank", "features", "image_auroc")
            print(json.dumps({"run": run.name, **{k: row[k] for k in keys if k in row}}), flush=True)


if __name__ == "__main__":
    main()
