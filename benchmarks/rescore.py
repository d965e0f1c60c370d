"""Image AUROC, pixel AUROC and AUPRO of trained runs recalibrated with their scoring settings changed (no
retraining), beside their own, and per encoder and category the means over data seeds, with the leading anomalib
peer's mean image AUROC (results.json).

    python benchmarks/rescore.py benchmarks/results/runs/*-pretrained_eps=[0-9]* --set upsample=2
    python benchmarks/rescore.py RUNS --base 'weights={pixel: 1, ssim: 1, feature: 1, memory: 1, nearest: 1}' \
        --set upsample=2

--base changes both rows (e.g. runs trained before a component existed); --set only the second.

A run named CATEGORY-VARIANT[-seedN] counts towards VARIANT's mean for CATEGORY. Prints one JSON line per run,
then one per (variant, category): its means before and after, and the best peer's mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import yaml
from run import _seed_table, recalibrated_detection  # benchmarks/ is no package: the modules sit side by side


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--set", dest="settings", type=_setting, action="append", required=True, help="KEY=VALUE")
    parser.add_argument("--base", type=_setting, action="append", default=[], help="KEY=VALUE, in both rows")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results.json"), help="for the peers")
    args = parser.parse_args()
    base, update = dict(args.base), dict(args.settings)
    label = ", ".join(f"{k}={v}" for k, v in update.items())
    means: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in args.runs:
        category, variant = re.sub(r"-seed\d+$", "", run.name).split("-", 1)
        (_, before), (_, after) = recalibrated_detection(run, [base, {**base, **update}])
        row = {"run": run.name, "before": before["image_auroc"], label: after["image_auroc"]}
        for metric in ("pixel_auroc", "aupro"):
            row |= {f"{metric} before": before[metric], f"{metric} after": after[metric]}
        print(json.dumps(row), flush=True)
        for key, value in row.items():
            if key != "run":
                means[(variant, category)][key].append(value)
    results = json.loads(args.results.read_text())
    seed0 = [row for row in results["peers"]["rows"] if "error" not in row]
    others = [row for row in results.get("peer_seeds", {}).get("rows", []) if "error" not in row]
    peers, _ = _seed_table(seed0, others, "model")
    for (variant, category), values in means.items():
        mean = {key: sum(v) / len(v) for key, v in values.items()}
        best = max(((v["mean"], model) for (c, model), v in peers.items() if c == category), default=(None, None))
        print(
            json.dumps(
                {
                    "variant": variant,
                    "category": category,
                    "runs": len(values[label]),
                    **{key: round(value, 4) for key, value in mean.items()},
                    "best peer": best[1],
                    "its mean": best[0],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
