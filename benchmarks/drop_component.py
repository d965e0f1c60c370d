"""A copy of a trained run without one score component, for timing only (benchmarks/speed.py): what the scoring
graph costs without it. Its scores are not calibrated: the fused score's normalisation and threshold are the
original's.

    python benchmarks/drop_component.py benchmarks/results/runs/bottle-pretrained_eps=1 nearest /tmp/four
    python benchmarks/speed.py --run /tmp/four --sizes 256 --batches 1
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml

from robust_ad.config import COMPONENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("component", choices=COMPONENTS)
    parser.add_argument("out", type=Path, help="the copy (replaced)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.run, args.out)
    config = yaml.safe_load((args.out / "config.yaml").read_text())
    config["scoring"]["weights"][args.component] = 0.0
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    calibration = json.loads((args.out / "calibration.json").read_text())
    calibration["components"].pop(args.component)
    (args.out / "calibration.json").write_text(json.dumps(calibration))
    if args.component == "nearest":  # the only component with statistics of its own
        payload = torch.load(args.out / "model.pt", weights_only=True)
        payload["memory"].pop("memory_bank")
        torch.save(payload, args.out / "model.pt")


if __name__ == "__main__":
    main()
