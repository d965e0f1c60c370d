"""The leading anomalib peers (the profile's peers.seed_models) on example data of data seeds that benchmarks/run.py's
peer_seeds section does not cover (it runs the pretrained section's seeds), as benchmarks/decoder_ema.py --seeds
measures robust-ad there: the peers' mean over the same seeds. One JSON line per peer and category appended to --out.

    python benchmarks/peer_seeds.py --seeds 3 4 --out benchmarks/peer_seeds.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import peers
from run import PROFILES, _peer_rows, seed_data

from robust_ad import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="data seeds")
    parser.add_argument("--eps", type=float, default=1.0, help="robust-ad's eps, for the shared config (image size)")
    parser.add_argument("--data", type=Path, default=Path("benchmarks/results"), help="where data, data-seedN are")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if peers.available() is None:
        raise SystemExit("anomalib is not installed here (pip install -e '.[bench]')")
    profile = PROFILES["full"]
    settings = {**profile["peers"], "models": profile["peers"]["seed_models"]}
    for seed in args.seeds:
        for category in profile["pretrained"]["categories"]:
            root = seed_data(profile, args.data, seed, category)
            for row in _peer_rows(profile, {category: root}, args.eps, settings):
                row = {**row, "seed": seed, "anomalib": peers.available(), "machine": machine.describe()}
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row)[:300], flush=True)


if __name__ == "__main__":
    main()
