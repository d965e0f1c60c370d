"""Image AUROC per defect type of trained runs, by each score component alone and by all of them (the default
score), each recalibrated on the run's normal images (no retraining); then per category, the means over runs.

    python benchmarks/per_defect.py /tmp/decoder-ema/{fabric,gravel}-seed{0,1,2}-ema0.995
    python benchmarks/per_defect.py RUNS --also colour   # and the default score with the colour component added
    python benchmarks/per_defect.py RUNS --components colour --also colour --also-weight 0.5   # added at weight 0.5

Which defects a component sees, and which none does: where a new component is needed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

# benchmarks/ is no package: the modules sit side by side
from run import alone_then_all, recalibrated_detection, weight_updates

from robust_ad import rundir
from robust_ad.config import COMPONENTS, DEFAULT_COMPONENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    parser.add_argument(
        "--also", nargs="+", choices=COMPONENTS, default=[], help="then the default components with these added"
    )
    parser.add_argument("--also-weight", type=float, default=1.0, help="the added components' weight (the rest: 1)")
    args = parser.parse_args()
    subsets = alone_then_all(args.components)
    added = [c for c in args.also if c not in DEFAULT_COMPONENTS]
    if args.also:
        subsets.append([*DEFAULT_COMPONENTS, *added])
    updates = weight_updates(subsets)
    names = ["all" if subset == list(DEFAULT_COMPONENTS) else "+".join(subset) for subset in subsets]
    if args.also:
        updates[-1]["weights"].update(dict.fromkeys(added, args.also_weight))
        names[-1] += f"@{args.also_weight:g}" if args.also_weight != 1 else ""
    means: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in args.runs:
        category = rundir.read_config(run).category
        for name, (_, metrics) in zip(names, recalibrated_detection(run, updates), strict=True):
            row = {"all defects": metrics["image_auroc"], "pixel AUROC": metrics["pixel_auroc"]}
            row |= {defect: m["image_auroc"] for defect, m in metrics["per_defect_type"].items()}
            print(json.dumps({"run": str(run), "components": name, **row}), flush=True)
            for defect, value in row.items():
                means[(category, name, defect)].append(value)
    for category in sorted({key[0] for key in means}):
        for name in names:
            row = {d: round(float(np.mean(v)), 3) for (c, n, d), v in means.items() if (c, n) == (category, name)}
            print(json.dumps({"category": category, "components": name, **row}), flush=True)


if __name__ == "__main__":
    main()
