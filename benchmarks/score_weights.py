"""Score components chosen per pretrained encoder on other example data, then measured on the benchmark's.

    python benchmarks/score_weights.py --out benchmarks/score_weights.json

The pretrained section of benchmarks/run.py fuses the five score components with equal weights. Which of
them to use is a choice; made on the test images it would flatter whoever is compared. Here each pretrained
encoder (the eps sweep of that section: benchmarks/results/encoders/enc-eps<E>.pt) gets a decoder per
example category (trained as long as that section's) on data of another seed (seed 1; the benchmark's is
seed 0), every non-empty subset of the
components, equally weighted, is scored there, and the subset with the best mean image AUROC is then measured
on the benchmark's own runs of every other data seed (benchmarks/results/runs/<category>-pretrained_eps=<E>
for seed 0, ...-seed<N> for the section's other seeds). Run the pretrained section first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from datetime import date
from pathlib import Path

from robust_ad import api, machine
from robust_ad.data.synth import synthesize
from robust_ad.scoring.scorer import COMPONENTS
from robust_ad.training.encoder import EncoderRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/ is no package

SUBSETS = [list(c) for k in range(1, len(COMPONENTS) + 1) for c in itertools.combinations(COMPONENTS, k)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/score-weights"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="run.py's --out folder")
    parser.add_argument("--seed", type=int, default=1, help="seed of the selection data (the benchmark's is 0)")
    parser.add_argument("--out", type=Path, required=True, help="write the selection and the measurement here")
    args = parser.parse_args(argv)
    profile = bench.PROFILES["full"]
    settings = profile["pretrained"]
    chosen, measured = {}, []
    for category in settings["categories"]:
        synthesize(args.work / "data", category, seed=args.seed, force=True, **profile["synth"])
    for eps in settings["eps"]:
        weights = args.results / "encoders" / f"enc-eps{eps:g}.pt"
        encoder = {**profile["encoder"], "weights": str(weights), "width": EncoderRun.load(weights)[0].config.width}
        scores = {"+".join(subset): [] for subset in SUBSETS}
        for category in settings["categories"]:
            autoencoder = {**profile["autoencoder"], "epochs": bench._decoder_epochs(profile)}  # the section's
            config = bench._config(profile, args.work / "data", category, eps, encoder=encoder, autoencoder=autoencoder)
            run = api.train(config, args.work / "runs" / f"{category}-eps{eps:g}", force=True)
            for row in bench._component_rows(run, SUBSETS):
                scores[row["components"]].append(row["image_auroc"])
        best = max(scores, key=lambda name: sum(scores[name]) / len(scores[name]))
        chosen[f"pretrained eps={eps:g}"] = {"components": best, "selection_image_auroc": scores[best], "all": scores}
        for seed in [seed for seed in settings["seeds"] if seed != args.seed]:
            for category in settings["categories"]:
                run = args.results / "runs" / f"{category}-pretrained_eps={eps:g}{f'-seed{seed}' if seed else ''}"
                (row,) = bench._component_rows(run, [best.split("+")])
                measured.append({"encoder": f"pretrained eps={eps:g}", "seed": seed, **row})
                print(json.dumps(measured[-1]), flush=True)
    command = "python benchmarks/score_weights.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "date": date.today().isoformat(),
        "machine": machine.describe(),
        "command": command.strip(),
        "selection_seed": args.seed,
        "chosen": chosen,
        "test": measured,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
