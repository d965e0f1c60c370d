"""Is the skip denoiser short of training? PSNR of the network alone (no guard) against training time and epochs,
on the denoising section's example data, test images and noise seed (benchmarks/run.py, denoise_repeats.py), with
the shipped encoder of the eps asked for (the recipe's named encoder; eps 0: its standard twin), as
``robust-ad train --mode denoise`` uses it.

With --at: one training, of more epochs than it will reach; at each --at time (seconds from the first epoch's end)
its latest checkpoint (written atomically after every epoch) is measured, and at the last one it is stopped. With
--epochs: one finished training per number of epochs, each measured at its end. Each measurement is appended to
--out as one JSON line as soon as it is made. Heavy: meant for a GPU
(benchmarks/gpu_denoise.sh runs several side by side there).

    python benchmarks/denoise_epochs.py --category bottle --eps 1 --at 60 300 --device cuda --out /tmp/d.jsonl
    python benchmarks/denoise_epochs.py ... --noise gaussian      # one noise type instead of the blind five
    python benchmarks/denoise_epochs.py --category photos --corpus CORPUS --data-root DIR --test-size 256 ...
        # the section's photographs, trained on corpus patches (the dataset made in DIR once, as run.py makes it)
    python benchmarks/denoise_epochs.py --category gravel --eps 1 --epochs 450 --init PHOTO_RUN ...
        # each denoiser starts from a finished denoising run's decoder (e.g. one trained on the photographs)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from pathlib import Path

from denoise_repeats import network_psnr  # benchmarks/ is no package: the modules sit side by side
from run import PROFILES, _config, _photo_dataset

from robust_ad import api, machine, rundir
from robust_ad.data.synth import synthesize
from robust_ad.tensors import load_checkpoint
from robust_ad.training import build
from robust_ad.training.averaging import MovingAverage
from robust_ad.training.build import build_autoencoder
from robust_ad.training.encoder import EncoderRun

MANY_EPOCHS = 1_000_000  # stopped by time, not by count


def _start_from(prior: Path | None) -> None:
    """Every denoiser this process builds starts from the decoder of the finished denoising run ``prior`` (none:
    from scratch). robust-ad has no such setting: this wraps the builder that ``api.train`` calls."""
    if prior is None:
        return
    decoder, plain = rundir.load_model(prior).decoder.state_dict(), build.build_autoencoder

    def from_prior(config):
        model = plain(config)
        if config.mode == "denoise":
            model.decoder.load_state_dict(decoder)
        return model

    build.build_autoencoder = from_prior


def _train(config, run: Path, prior: Path | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # each epoch's line: the pace
    _start_from(prior)  # a spawned process: the wrapper is made again here
    api.train(config, run, force=True)


def _measure(run: Path, device: str, test_size: int | None):
    """The epoch of the run's latest checkpoint and the PSNR (``network_psnr``) of the model it would keep: with
    ``denoise.ema``, the moving average of the decoder's weights."""
    config = rundir.read_config(run)
    state = load_checkpoint(run / rundir.CHECKPOINT)
    model = build_autoencoder(config)
    model.load_state_dict(state["modules"]["model"])
    if "ema" in state["modules"]:  # loaded as training saved it, then put in the decoder's place (fit_decoder)
        average = MovingAverage(model.decoder, config.autoencoder.ema)
        average.load_state_dict(state["modules"]["ema"])
        model.decoder.load_state_dict(average.module.state_dict())
    model = model.to(device).eval()
    return state["epoch"], network_psnr(model, config, test_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--eps", type=float, required=True)
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", type=float, nargs="+", help="one training, measured at these seconds of it")
    when.add_argument("--epochs", type=int, nargs="+", help="one finished training of each number of epochs")
    parser.add_argument("--encoders", type=Path, help="folder of enc-eps<E>.pt files (default: the shipped encoders)")
    parser.add_argument("--depth", type=int, default=0, help="denoise.depth: residual blocks at half resolution")
    parser.add_argument("--pixel-loss", choices=["l1", "l2"], help="autoencoder.pixel_loss (default: the recipe's)")
    parser.add_argument("--schedule", choices=["constant", "cosine"], help="denoise.lr_schedule (default: recipe's)")
    parser.add_argument("--ema", type=float, help="denoise.ema: the kept weights' moving-average decay (0: none)")
    parser.add_argument("--augment", choices=["flip", "dihedral"], help="denoise.augment (default: the recipe's)")
    parser.add_argument("--init", type=Path, help="a finished denoising run whose decoder each training starts from")
    parser.add_argument("--noise", nargs="+", help="denoise.noises to train on (default: the recipe's, all five)")
    parser.add_argument("--data-root", type=Path, help="a dataset holding --category (default: the section's synth)")
    parser.add_argument("--corpus", type=Path, help="photos: make the dataset in --data-root from this corpus")
    parser.add_argument("--test-size", type=int, help="test images at this size (the section's photos: 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/denoise-epochs"), help="data and runs (replaced)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    args = parser.parse_args()
    profile = PROFILES["full"]
    noises = args.noise or []
    loss = {"pixel_loss": args.pixel_loss} if args.pixel_loss else {}
    tags = [*noises, *loss.values(), *([args.schedule] if args.schedule else [])]
    tags += [f"ema{args.ema:g}"] if args.ema is not None else []
    tags += [args.augment] if args.augment else []
    tags += ["init"] if args.init else []
    name = f"{args.category}-eps{args.eps:g}-depth{args.depth}{''.join('-' + tag for tag in tags)}"
    work = args.work / name  # one per process: they run side by side
    root = args.data_root or work / "data"
    if args.corpus is not None:
        _photo_dataset(args.corpus, root, profile["denoise"])  # root / "photos", unless it is there
    elif args.data_root is None:
        synthesize(root, args.category, seed=0, force=True, **profile["synth"])  # the section's images
    encoder = {}
    if args.encoders is not None:
        path = args.encoders / f"enc-eps{args.eps:g}.pt"
        encoder = {**profile["encoder"], "weights": str(path), "width": EncoderRun.load(path)[0].config.width}
    row = {"category": args.category, "eps": args.eps, "depth": args.depth, "noises": noises or "all"}
    row |= {"encoder": str(encoder.get("weights", "shipped"))} | ({"init": str(args.init)} if args.init else {})

    def settings(epochs: int):
        denoise = {
            "architecture": "skip",
            "epochs": epochs,
            "depth": args.depth,
            **({"noises": noises} if noises else {}),
            **({"lr_schedule": args.schedule} if args.schedule else {}),
            **({"ema": args.ema} if args.ema is not None else {}),
            **({"augment": args.augment} if args.augment else {}),
        }
        data = {**profile["data"], "on_device": args.device != "cpu"}  # a GPU's training set on the GPU (8-bit)
        sections = {"denoise": denoise, "data": data, "autoencoder": {**profile["autoencoder"], **loss}}
        sections |= {"encoder": encoder} if encoder else {}
        return _config(
            profile, root, args.category, args.eps, not encoder, device=args.device, mode="denoise", **sections
        )

    def write(values: dict) -> None:
        values = {**row, **values, "machine": machine.describe()}
        with args.out.open("a") as handle:
            handle.write(json.dumps(values) + "\n")
        print(json.dumps(values), flush=True)

    row["pixel_loss"], row["schedule"] = settings(1).autoencoder.pixel_loss, settings(1).denoise.lr_schedule
    row["ema"], row["augment"] = settings(1).denoise.ema, settings(1).denoise.augment
    if args.epochs:
        _start_from(args.init)
        for epochs in args.epochs:
            began = time.perf_counter()
            run = api.train(settings(epochs), work / f"run-{epochs}", force=True)
            minutes = round((time.perf_counter() - began) / 60, 2)
            psnr = network_psnr(rundir.load_model(run, args.device), rundir.read_config(run), args.test_size)
            write({"epochs": epochs, "minutes": minutes, **{f"sigma{sigma}": v for sigma, v in psnr.items()}})
        return
    run = work / "run"
    training = multiprocessing.get_context("spawn").Process(target=_train, args=(settings(MANY_EPOCHS), run, args.init))
    training.start()
    while not (run / rundir.CHECKPOINT).is_file():  # the clock starts at the first epoch's end
        if not training.is_alive():
            raise SystemExit(f"the training stopped before its first epoch (exit code {training.exitcode})")
        time.sleep(0.2)
    began = time.perf_counter()
    try:
        for at in args.at:
            time.sleep(max(0.0, began + at - time.perf_counter()))
            epoch, psnr = _measure(run, args.device, args.test_size)
            seconds = round(time.perf_counter() - began)
            write({"seconds": seconds, "epochs": epoch, **{f"sigma{sigma}": v for sigma, v in psnr.items()}})
    finally:
        training.terminate()
        training.join()


if __name__ == "__main__":
    main()
