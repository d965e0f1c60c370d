"""Is the skip denoiser short of training? PSNR of the network alone (no guard) after each number of epochs, on the
denoising section's example data, test images and noise seed (benchmarks/run.py, denoise_repeats.py), with a
corpus-pretrained encoder file per eps (the section's: benchmarks/results/encoders/enc-eps<E>.pt). One training per
(category, eps, epochs); each result is appended to --out as one JSON line as soon as it is measured. Heavy: meant
for a GPU (benchmarks/gpu_denoise.sh runs it there).

    python benchmarks/denoise_epochs.py --category bottle --eps 1 --epochs 200 2000 --device cuda \
        --encoders benchmarks/results/encoders --out /tmp/denoise_epochs.jsonl
    python benchmarks/denoise_epochs.py ... --noise gaussian      # one noise type instead of the blind five
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from denoise_repeats import network_psnr  # benchmarks/ is no package: the modules sit side by side
from run import PROFILES, _config

from robust_ad import api, machine, rundir
from robust_ad.data.synth import synthesize
from robust_ad.training.encoder import EncoderRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--epochs", type=int, nargs="+", required=True)
    parser.add_argument("--encoders", type=Path, required=True, help="folder of enc-eps<E>.pt files")
    parser.add_argument("--depth", type=int, default=0, help="denoise.depth: residual blocks at half resolution")
    parser.add_argument("--noise", nargs="+", help="denoise.noises to train on (default: the recipe's, all five)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/denoise-epochs"), help="data and runs (replaced)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # each epoch's line: the pace
    profile = PROFILES["full"]
    work = args.work / f"{args.category}-eps{args.eps:g}-depth{args.depth}"  # one per process: they run side by side
    root = work / "data"
    synthesize(root, args.category, seed=0, force=True, **profile["synth"])  # the section's images (deterministic)
    path = args.encoders / f"enc-eps{args.eps:g}.pt"
    encoder = {**profile["encoder"], "weights": str(path), "width": EncoderRun.load(path)[0].config.width}
    for epochs in args.epochs:
        config = _config(
            profile,
            root,
            args.category,
            args.eps,
            device=args.device,
            mode="denoise",
            encoder=encoder,
            denoise={
                "architecture": "skip",
                "epochs": epochs,
                "depth": args.depth,
                **({"noises": args.noise} if args.noise else {}),
            },
        )
        began = time.perf_counter()
        run = api.train(config, work / f"run-{epochs}", force=True)
        row = {"category": args.category, "eps": args.eps, "epochs": epochs, "depth": args.depth, "encoder": str(path)}
        row |= {"noises": config.denoise.noises}
        row |= {"minutes": round((time.perf_counter() - began) / 60, 2), "machine": machine.describe()}
        row |= {f"sigma{sigma}": psnr for sigma, psnr in network_psnr(rundir.load_model(run), config).items()}
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
