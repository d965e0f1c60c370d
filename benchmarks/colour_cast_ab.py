"""What removing the decoder's colour cast changes in detection, on trained runs: each run calibrated and
evaluated twice, with the cast removed (the default) and kept (``scoring.remove_colour_cast: false``).

    python benchmarks/colour_cast_ab.py benchmarks/results/runs/*-pretrained_eps=?

Prints one JSON line per run: image AUROC, pixel AUROC and AUPRO both ways, and the fitted cast (8-bit levels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import run as bench  # benchmarks/run.py: run this script from the repository root as above


def measure(run: Path) -> dict:
    ways = {"removed": True, "kept": False}
    updates = [{"remove_colour_cast": remove} for remove in ways.values()]
    results = dict(zip(ways, bench.recalibrated_detection(run, updates), strict=True))
    row: dict = {"run": run.name}
    for way, (_, metrics) in results.items():
        row.update({f"{k}_{way}": round(metrics[k], 3) for k in bench.DETECTION_KEYS})
    row["cast_255"] = [round(float(v) * 255, 2) for v in results["removed"][0].colour_offset]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="trained detection run folders")
    for run in parser.parse_args().runs:
        print(json.dumps(measure(run)), flush=True)


if __name__ == "__main__":
    main()
