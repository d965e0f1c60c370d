"""Ship corpus-pretrained encoders inside the package: fp16 weights, index and model card.

    python benchmarks/ship_encoders.py --corpus CORPUS --robust enc-eps1.pt enc-eps3.pt --twin enc-eps0.pt

The first --robust file is the one every recipe names; the others ship beside it (``train --eps E`` picks the
one robust at E).

The files come from ``robust-ad encoder pretrain --corpus CORPUS --recipe pretrain --eps E`` (the
benchmark's pretrained section makes them under benchmarks/results/encoders/). Writes
robust_ad/encoders/<name>.pt, index.json and MODEL_CARD.md (corpus and licences, eps, held-out clean and PGD
accuracy, command, time and machine). Maintainers run this; users get the result with the package.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections import Counter
from datetime import date
from pathlib import Path

from robust_ad.data.corpus import corpus_files
from robust_ad.training import pretrained
from robust_ad.training.encoder import EncoderRun, evaluate_encoder

PREFIX = "robust-ad-r18w05-l2"
ATTACK = {"steps": 10, "restarts": 1}


def _describe(path: Path, corpus: Path) -> dict:
    run, payload = EncoderRun.load(path)
    held_out = corpus_files(corpus, "val", run.image_size)
    accuracy = {}
    for attack in sorted({run.config.eps, 1.0} - {0.0}):
        result = evaluate_encoder(run, held_out, eps=attack, seed=1, **ATTACK)
        accuracy["clean"], accuracy[f"PGD L2 eps {attack:g}"] = result["clean_acc"], result["pgd_acc"]
    return {"run": run, "accuracy": accuracy, "held_out": len(held_out), "machine": payload.get("machine")}


def _corpus_table(rows: list[dict]) -> str:
    """Images and licence per source package, from the corpus manifest's rows."""
    images = Counter(row["source"] for row in rows)
    licences = {row["source"]: row["licence"] for row in rows}
    lines = ["| source | images | licence |", "|---|---|---|"]
    lines += [f"| {source} | {count} | {licences[source]} |" for source, count in sorted(images.items())]
    return "\n".join(lines)


def model_card(entries: dict[str, dict], corpus: Path, command: str, recipe: str, machine_name: str) -> str:
    """The card of the shipped ``entries`` (the recipes' default first, the twin last)."""
    default, first = next(iter(entries)), next(iter(entries.values()))["run"]
    cfg = first.config
    n_classes = first.proxy.n_labels
    manifest = list(csv.DictReader((corpus / "manifest.csv").open()))
    packages = len({row["source"] for row in manifest})
    rows = [
        "| name | eps (L2) | held-out clean acc | held-out PGD acc | epochs | minutes | fastest epoch | size "
        "| SHA-256 |"
    ]
    rows.append("|---|---|---|---|---|---|---|---|---|")
    index = json.loads((pretrained.shipped_folder() / pretrained.SHIPPED_INDEX).read_text())
    for name, entry in entries.items():
        run, acc = entry["run"], entry["accuracy"]
        pgd = ", ".join(f"{v:.3f} ({k})" for k, v in acc.items() if k != "clean") or "n/a (eps 0)"
        size = (pretrained.shipped_folder() / f"{name}.pt").stat().st_size / 2**20
        rows.append(
            f"| {name} | {run.config.eps:g} | {acc['clean']:.3f} | {pgd} | {len(run.history)} | "
            f"{run.minutes:.1f} | {min(r['seconds'] for r in run.history):.0f} s | {size:.1f} MiB | "
            f"`{index[name]['sha256'][:16]}…` |"
        )
    return f"""# Model card: robust-ad's shipped encoders

Encoders that `robust-ad train` uses by default (every recipe names `{default}`; `--eps 0` takes its
standard twin `{PREFIX}-eps0`, `--eps E` the one robust at E where one ships; `--encoder scratch` trains
one per category instead).

## What they are
- ResNet-18 at {cfg.width:g} x channel width, stages `conv1` … `{cfg.layer}` (what the recipes' decoders invert;
  feature layers {", ".join(cfg.feature_layers)}). Inputs: RGB in [0, 1]; ImageNet mean/std normalisation is
  built into the encoder. Stored in fp16 (the classifier head is not shipped).
- Trained with `robust-ad encoder pretrain` (recipes/{recipe}.yaml): the epochs in the table below, batch
  {cfg.batch_size}, Adam lr {cfg.lr:g} ({cfg.lr_schedule} schedule), PGD {cfg.pgd_steps} steps within an L2 ball
  of radius eps (on [0, 1] pixels of {first.image_size} px crops). eps 0 runs the same loop without the attack:
  the standard twin.
- Proxy task (`labels+corruption`): which of {n_classes} source pictures a random crop (half to all of a corpus
  patch) comes from, and which of 5 corruptions (none, cut-paste, noise, colour shift, blur) it carries; the PGD
  adversary attacks both heads.

## Corpus
`robust-ad datasets corpus` from {packages} Debian packages (downloaded with `apt-get download`,
unpacked with `dpkg-deb -x`; normal, bump, gloss and height maps and flat patches skipped), {n_classes} source pictures
(wallpapers shipped at several resolutions count once). Held out: every 10th patch of each photograph cut into
at least four ({next(iter(entries.values()))["held_out"]} patches). No corpus file is in this repository.

{_corpus_table(manifest)}

## Results (held-out corpus patches; PGD {ATTACK["steps"]} steps, {ATTACK["restarts"]} restart)
Accuracy is of the joint task: the source picture and the corruption both right. Minutes are wall-clock on the
machine below, at times shared with other work; the fastest epoch shows the uncontended pace.

{chr(10).join(rows)}

Detection with these encoders, against per-category training and the anomalib peers: benchmarks/RESULTS.md
(section "Pretrained encoders").

## How they were made
`{command}`; shipped on {date.today().isoformat()}. Trained on: {machine_name}.

## Use and limits
Licences: the weights are derived from the packages above (GPL-2+, CC-BY-SA-3.0 and the nexuiz-textures terms
in its copyright file). They are feature extractors for normal-vs-defect reconstruction on small CPU-sized
models; they saw no industrial images. Where a GPU and internet are available, the published ImageNet encoders
(`robust-ad encoder list`) are larger and trained on far more data.
"""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument(
        "--robust", type=Path, nargs="+", required=True, help="robust encoder pretrain files (first: default)"
    )
    parser.add_argument("--twin", type=Path, required=True, help="encoder pretrain file of its eps 0 twin")
    parser.add_argument("--command", default="see benchmarks/RESULTS.md", help="the pretraining command, for the card")
    parser.add_argument("--recipe", default="pretrain", help="the pretraining recipe, for the card")
    parser.add_argument("--machine", help="where the files trained, for files that do not record it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    entries = {}
    for path in (*args.robust, args.twin):
        described = _describe(path, args.corpus)
        entries[f"{PREFIX}-eps{described['run'].config.eps:g}"] = {**described, "path": path}
    trained_on = {entry["machine"] or args.machine for entry in entries.values()}
    if None in trained_on:
        parser.error("an encoder file does not record where it trained: give --machine")
    for name, entry in entries.items():
        pretrained.write_shipped(entry["path"], name)
    card = pretrained.shipped_folder() / "MODEL_CARD.md"
    card.write_text(model_card(entries, args.corpus, args.command, args.recipe, " and ".join(sorted(trained_on))))
    logging.getLogger("ship").info("wrote %s", card)
    return card


if __name__ == "__main__":
    main()
