"""Score-component subsets and nearest-bank sizes on trained runs, each recalibrated (no retraining): how the
`nearest` component was chosen (README, "New score component"). Prints one JSON line per run and setting.

    python benchmarks/nearest_probe.py benchmarks/results/score-weights/runs/{bottle,fabric,gravel}-eps{0,1}
    python benchmarks/nearest_probe.py benchmarks/results/score-weights/runs/*-eps1 --banks 1024 4096 100000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import recalibrated_detection  # benchmarks/ is no package: the modules sit side by side

from robust_ad.config import COMPONENTS

SUBSETS = ["pixel+ssim+feature+memory", "pixel+ssim+feature+memory+nearest", "nearest", "memory+nearest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--subsets", nargs="+", default=SUBSETS, help="components joined by '+'")
    parser.add_argument("--banks", type=int, nargs="+", help="instead: 'nearest' alone at each bank size")
    args = parser.parse_args()
    banks = [("nearest", bank) for bank in args.banks or []]
    settings = banks or [(subset, None) for subset in args.subsets]
    for run in args.runs:
        updates = []
        for subset, bank in settings:
            update: dict = {"weights": {c: float(c in subset.split("+")) for c in COMPONENTS}}
            if bank:
                update["nearest_bank"] = bank
            updates.append(update)
        for (subset, bank), (_, metrics) in zip(settings, recalibrated_detection(run, updates), strict=True):
            row = {"run": run.name, "components": subset, "nearest_bank": bank, "image_auroc": metrics["image_auroc"]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
