"""Repeat one denoiser training to see its spread: the settings of an existing denoising run folder, with a
learning-rate schedule, seed and (optionally) training noises and epochs of your choice; PSNR of the network alone (no
guard) on the run's test images.

    python benchmarks/denoise_repeats.py --run benchmarks/results/runs/bottle-denoise-skip_eps=1 \
        --schedule constant --seed 0 --out /tmp/repeat

Prints one JSON line: the settings, the training minutes and (input dB, output dB blind, output dB given the true
sigma) at Gaussian sigma 2, 25 and 50 of 255, on the first 12 test images (the denoising section's images and noise
seed).
"""

from __future__ import annotations

import argparse
import json
import time

from robust_ad import api, rundir
from robust_ad.config import NOISES, config_from_dict
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.denoising import corrupt_images, image_quality

SIGMAS = (2, 25, 50)  # of 255
TEST_IMAGES, NOISE_SEED = 12, 1  # as benchmarks/run.py's denoising section


def network_psnr(model, config, test_size: int | None = None) -> dict[int, list[float]]:
    """(input dB, output dB) of the network alone (no guard) at each of SIGMAS, on the first TEST_IMAGES test images
    of ``config``'s data."""
    model.guard = False
    test = load_split(open_dataset(config), "test", config, test_size).images[:TEST_IMAGES]
    psnr = {}
    for sigma in SIGMAS:
        noisy = corrupt_images(test, "gaussian", sigma / 255, NOISE_SEED)
        outputs = (noisy, model.reconstruct(noisy), model.reconstruct(noisy, sigma=sigma / 255))
        psnr[sigma] = [round(image_quality(test, images)[0], 2) for images in outputs]
    return psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a denoising run folder whose settings to repeat")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", nargs="+", choices=NOISES, help="train on these noises (default: the run's)")
    parser.add_argument("--epochs", type=int, help="train this many epochs (default: the run's)")
    parser.add_argument("--out", required=True, help="folder for the new run (replaced)")
    parser.add_argument("--test-size", type=int, default=None, help="test images at this size (photos: 256)")
    args = parser.parse_args()
    values = rundir.read_config(args.run).to_dict()
    values["seed"] = args.seed
    if args.noise:
        values["denoise"]["noises"] = args.noise
    values["denoise"]["lr_schedule"] = values["autoencoder"]["lr_schedule"] = args.schedule
    if args.epochs:
        values["denoise"]["epochs"] = values["autoencoder"]["epochs"] = args.epochs
    config = config_from_dict(values)
    began = time.perf_counter()
    run_dir = api.train(config, args.out, force=True)
    minutes = (time.perf_counter() - began) / 60
    psnr = network_psnr(rundir.load_model(run_dir), config, args.test_size)
    settings = {"run": args.run, "schedule": args.schedule, "seed": args.seed, "noises": config.denoise.noises}
    settings["epochs"] = config.denoise.epochs
    print(json.dumps({**settings, "minutes": minutes, **psnr}))


if __name__ == "__main__":
    main()
