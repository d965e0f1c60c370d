"""A copy of a trained run without one score component, for timing only (benchmarks/speed.py): what the scoring
graph costs without it. Its scores are not calibrated: the fused score's normalisation and threshold are the
original's.

    python benchmarks/drop_component.py benchmarks/results/runs/bottle-pretrained_eps=1 nearest /tmp/four [--force]
    python benchmarks/speed.py --run /tmp/four --sizes 256 --batches 1
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from robust_ad import rundir
from robust_ad.config import COMPONENTS
from robust_ad.scoring.scorer import AnomalyScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("component", choices=COMPONENTS)
    parser.add_argument("out", type=Path, help="the copy")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists: give --force to replace it")
    scorer = rundir.load_scorer(args.run)
    config, calibration = rundir.read_config(args.run), rundir.read_calibration(args.run)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.run, args.out)
    weights = {**config.scoring.weights, args.component: 0.0}
    scoring = config.scoring.model_copy(update={"weights": weights})
    rundir.write_config(args.out, config.model_copy(update={"scoring": scoring}))
    components = {k: v for k, v in calibration.components.items() if k != args.component}
    rundir.write_calibration(args.out, calibration.model_copy(update={"components": components}))
    kept = AnomalyScorer(scorer.model, scoring, scorer.train_size).memory_statistics()  # the ones the rest need
    memory = {k: v for k, v in scorer.memory_statistics().items() if k in kept}
    rundir.save_model(args.out, scorer.model, memory)


if __name__ == "__main__":
    main()
