"""The Python API: one function per CLI command, so a notebook can do what the command line does."""

from __future__ import annotations

from pathlib import Path

from robust_ad.config import Config, load_config
from robust_ad.device import resolve_device
from robust_ad.errors import ConfigError
from robust_ad.fileio import check_writable, write_json


def train_encoder(config: Config, categories: list[str], out: str | Path, resume: bool = False, force: bool = False):
    """``robust-ad encoder train``: robust proxy training on the normal images of ``categories``."""
    from robust_ad.training.data import labelled_images
    from robust_ad.training.encoder import train_encoder as _train

    if not resume:
        check_writable(out, force)
    images, labels = labelled_images(config, categories, "train")
    return _train(
        images,
        config.encoder,
        labels if config.encoder.proxy_task == "labels" else None,
        resolve_device(config.device),
        config.seed,
        out,
        resume,
        categories,
    )


def evaluate_encoder(
    encoder: str | Path,
    categories: list[str],
    data_root: str | Path,
    eps: float | None = None,
    norm: str | None = None,
    steps: int = 20,
    restarts: int = 2,
    device: str = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
) -> dict:
    """``robust-ad encoder eval``: clean and PGD accuracy on the held-out normal images of ``categories``."""
    from robust_ad.training.data import labelled_images
    from robust_ad.training.encoder import EncoderRun
    from robust_ad.training.encoder import evaluate_encoder as _evaluate

    if out is not None:
        check_writable(out, force)
    run, _ = EncoderRun.load(encoder)
    config = load_config(None, {"data_root": str(data_root), "seed": seed, "data": {"image_size": run.image_size}})
    if run.config.proxy_task == "labels" and list(categories) != run.categories:
        raise ConfigError(f"this encoder classifies the categories {run.categories}: evaluate on exactly those")
    images, labels = labelled_images(config, categories, "val")
    result = _evaluate(
        run,
        images,
        labels if run.config.proxy_task == "labels" else None,
        eps,
        norm,
        steps,
        restarts,
        resolve_device(device),
        seed,
    )
    if out is not None:
        write_json(out, {"encoder": str(encoder), "categories": categories, **result})
    return result
