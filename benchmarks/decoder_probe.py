"""The pretrained section's decoder (benchmarks/run.py) on one category, data seed and encoder file, at each
colour-loss weight (autoencoder.w_colour) and, optionally, other decoder epochs: does the colour error come under
2/255 (issue 14), and at what detection cost? Prints one JSON line per weight: image AUROC, pixel AUROC, AUPRO,
PSNR, the colour error as scoring has it and the decoder's own.

    python benchmarks/decoder_probe.py --category fabric --encoder benchmarks/results/encoders/enc-eps1.pt \
        --weights 1 5 20 [--epochs 45] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import PROFILES, _config, _train_and_measure  # benchmarks/ is no package: the modules sit side by side

from robust_ad.data.synth import synthesize
from robust_ad.training.encoder import EncoderRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--encoder", type=Path, required=True, help="an encoder pretrain file")
    parser.add_argument("--weights", type=float, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, help="decoder epochs (default: the section's)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (the section's runs: 0)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/colour-weight"), help="data and runs (replaced)")
    args = parser.parse_args()
    profile = PROFILES["full"]
    root = args.work / f"data-{args.seed}"
    synthesize(root, args.category, seed=args.seed, force=True, **profile["synth"])
    run, _ = EncoderRun.load(args.encoder)
    encoder = {**profile["encoder"], "weights": str(args.encoder), "width": run.config.width}
    for weight in args.weights:
        autoencoder = {**profile["autoencoder"], "w_colour": weight}
        if args.epochs:
            autoencoder["epochs"] = args.epochs
        config = _config(profile, root, args.category, run.config.eps, encoder=encoder, autoencoder=autoencoder)
        row = _train_and_measure(config, args.work / f"run-{args.category}-{weight:g}")
        keep = ("image_auroc", "pixel_auroc", "aupro", "colour_error", "decoder_colour_error", "psnr")
        settings = {"category": args.category, "w_colour": weight, "epochs": autoencoder["epochs"]}
        print(json.dumps({**settings, **{k: row[k] for k in keep}}), flush=True)


if __name__ == "__main__":
    main()
