"""What correcting the decoder's colour response changes, on trained runs: each run calibrated and evaluated three
ways: its colour matrix and cast corrected (the default), the cast alone (the matrix held at the identity, as before
the matrix was fitted), and nothing corrected (``scoring.remove_colour_cast: false``).

    python benchmarks/colour_cast_ab.py benchmarks/results/runs/*-pretrained_eps=?

Prints one JSON line per run: image AUROC, pixel AUROC and AUPRO each way, the colour error of the held-out normal
images' reconstructions each way (worst channel, 8-bit levels, as training.json reports it), and the fitted matrix
and cast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import numpy as np
import run as bench  # benchmarks/run.py: run this script from the repository root as above
import torch

from robust_ad import rundir
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.scoring import calibration
from robust_ad.scoring.scorer import AnomalyScorer
from robust_ad.tensors import to_images, to_tensor
from robust_ad.training.autoencoder import colour_error


def cast_only(colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The correction before the colour response was fitted: the identity matrix, the mean cast."""
    return torch.eye(3), (colours[:, 1] - colours[:, 0]).mean(0).float()


@torch.no_grad()
def reconstruction_error(scorer: AnomalyScorer, images: np.ndarray) -> float:
    """The worst channel's colour error of the reconstructions that scoring compares ``images`` with."""
    tensor = to_tensor(images)
    x_hat = torch.cat([scorer(part)[3] for part in tensor.split(16)])
    return max(colour_error(images, to_images(x_hat)))


def measure(run: Path) -> dict:
    config = rundir.read_config(run)
    val = load_split(open_dataset(config), "val", config).images
    row: dict = {"run": run.name}
    for way, update, fit in (
        ("affine", {"remove_colour_cast": True}, calibration.fit_colour_response),
        ("cast", {"remove_colour_cast": True}, cast_only),
        ("kept", {"remove_colour_cast": False}, calibration.fit_colour_response),
    ):
        with mock.patch.object(calibration, "fit_colour_response", fit):
            [(scorer, metrics)] = bench.recalibrated_detection(run, [update])
        row.update({f"{k}_{way}": round(metrics[k], 3) for k in bench.DETECTION_KEYS})
        row[f"colour_error_{way}"] = round(reconstruction_error(scorer, val), 2)
        if way == "affine":
            row["matrix"] = [[round(float(v), 3) for v in rows] for rows in scorer.colour_matrix]
            row["cast_255"] = [round(float(v) * 255, 2) for v in scorer.colour_offset]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="trained detection run folders")
    for run in parser.parse_args().runs:
        print(json.dumps(measure(run)), flush=True)


if __name__ == "__main__":
    main()
