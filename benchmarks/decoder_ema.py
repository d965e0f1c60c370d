"""Does the detection decoder gain from keeping the moving average of its weights (``autoencoder.ema``), as the
denoiser does? The pretrained section's runs of the shipped encoder robust at --eps (0: its standard twin), its
decoder epochs and the example data of its seeds, trained with each --ema value; one JSON line per run (detection
metrics, colour error) appended to --out.

    python benchmarks/decoder_ema.py --ema 0 0.995 --out benchmarks/decoder_ema.jsonl
    python benchmarks/decoder_ema.py --eps 0 --ema 0.995 --out benchmarks/decoder_ema.jsonl
    python benchmarks/decoder_ema.py --ema 0.995 --seeds 3 4 --out F  # runs on data no section measures
    python benchmarks/decoder_ema.py --ema 0.995 --seeds 0 1 2 3 4 --categories fabric gravel --finetune-epochs 5 \
        --out F  # the shipped encoder fine-tuned on each category's proxy task first (--encoder-finetune-epochs)
    python benchmarks/decoder_ema.py --ema 0.995 --seeds 0 1 2 3 4 --scratch --out F  # the section's 'scratch'
    python benchmarks/decoder_ema.py --ema 0.995 --categories fabric --seeds 0 --test-images 100 40 --out F
        # more test images than the section's (normal, per defect type): where its AUROC saturates
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from run import PROFILES, _config, _decoder_epochs, _train_and_measure, seed_data

from robust_ad import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ema", type=float, nargs="+", required=True, help="autoencoder.ema values to compare")
    parser.add_argument("--eps", type=float, default=1.0, help="the shipped encoder's eps (0: the standard twin)")
    parser.add_argument("--seeds", type=int, nargs="+", help="data seeds (default: the section's)")
    parser.add_argument("--categories", nargs="+", help="example categories (default: the section's)")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="encoder.finetune_epochs (0: none)")
    parser.add_argument(
        "--scratch", action="store_true", help="an encoder trained on each category (robust at --eps) instead"
    )
    parser.add_argument(
        "--test-images",
        type=int,
        nargs=2,
        metavar=("GOOD", "PER_DEFECT"),
        help="example data with this many normal test images and images per defect type (in DATA/test-GOOD-PER_DEFECT)",
    )
    parser.add_argument("--data", type=Path, default=Path("benchmarks/results"), help="where data, data-seedN are")
    parser.add_argument("--work", type=Path, default=Path("/tmp/decoder-ema"), help="run folders (replaced)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profile, settings = PROFILES["full"], PROFILES["full"]["pretrained"]
    data, tests = args.data, ""
    if args.test_images:
        good, per_defect = args.test_images
        profile = {**profile, "synth": {**profile["synth"], "n_test_good": good, "n_per_defect": per_defect}}
        data, tests = args.data / f"test-{good}-{per_defect}", f"-test{good}x{per_defect}"
    encoder = {"finetune_epochs": args.finetune_epochs}
    tuned = {"finetune_epochs": args.finetune_epochs} if args.finetune_epochs else {}  # in the row and run name
    tuned |= {"encoder": "scratch"} if args.scratch else {}
    tune = (f"-ft{args.finetune_epochs}" if args.finetune_epochs else "") + ("-scratch" if args.scratch else "")
    for seed in args.seeds or settings["seeds"]:
        for category in args.categories or settings["categories"]:
            root = seed_data(profile, data, seed, category)
            for ema in args.ema:
                autoencoder = {**profile["autoencoder"], "epochs": _decoder_epochs(profile), "ema": ema}
                config = _config(
                    profile, root, category, args.eps, not args.scratch, autoencoder=autoencoder, encoder=encoder
                )
                row = {"category": category, "seed": seed, "eps": args.eps, "ema": ema, **tuned}
                row |= {"test_images": args.test_images} if args.test_images else {}
                row["components"] = [c for c, weight in config.scoring.weights.items() if weight > 0]
                run = args.work / f"{category}-seed{seed}-eps{args.eps:g}{tune}{tests}-ema{ema:g}"
                row |= _train_and_measure(config, run)
                row["machine"] = machine.describe()
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
