"""What removing the decoder's colour cast changes in detection, on trained runs: each run calibrated and
evaluated twice, with the cast removed (the default) and kept (``scoring.remove_colour_cast: false``).

    python benchmarks/colour_cast_ab.py benchmarks/results/runs/*-pretrained_eps=?

Prints one JSON line per run: image AUROC, pixel AUROC and AUPRO both ways, and the fitted cast (8-bit levels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robust_ad import rundir
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.scoring.calibration import calibrate
from robust_ad.scoring.evaluate import evaluate
from robust_ad.scoring.inference import predict
from robust_ad.scoring.scorer import AnomalyScorer
from robust_ad.tensors import to_tensor


def measure(run: Path) -> dict:
    config = rundir.read_config(run)
    dataset = open_dataset(config)
    train, val, test = (load_split(dataset, split, config) for split in ("train", "val", "test"))
    row: dict = {"run": run.name}
    for remove in (True, False):
        scoring = config.scoring.model_copy(update={"remove_colour_cast": remove})
        scorer = AnomalyScorer(rundir.load_model(run), scoring, config.data.image_size)
        record = calibrate(scorer, to_tensor(train.images).split(config.data.batch_size), val.images)
        metrics = evaluate(test, predict(scorer, test.images), record["threshold"])
        way = "removed" if remove else "kept"
        row.update({f"{k}_{way}": round(metrics[k], 3) for k in ("image_auroc", "pixel_auroc", "aupro")})
        if remove:
            row["cast_255"] = [round(v * 255, 2) for v in record["colour_offset"]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="trained detection run folders")
    for run in parser.parse_args().runs:
        print(json.dumps(measure(run)), flush=True)


if __name__ == "__main__":
    main()
