"""The Python API: one function per CLI command, so a notebook can do what the command line does."""

from __future__ import annotations

import logging
from pathlib import Path

from robust_ad.config import Config, load_config
from robust_ad.errors import ConfigError
from robust_ad.fileio import check_writable, write_json, write_text

log = logging.getLogger(__name__)


def train_encoder(config: Config, categories: list[str], out: str | Path, resume: bool = False, force: bool = False):
    """``robust-ad encoder train``: robust proxy training on the normal images of ``categories``."""
    from robust_ad.device import resolve_device
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
    from robust_ad.device import resolve_device
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


def _write_losses(path: Path, history: list[dict[str, float]]) -> None:
    import csv
    import io

    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _prepare_encoder(model, config: Config, train_images, run_dir: Path, resume: bool, device) -> dict:
    """Load the user's robust weights, or adversarially train the encoder (resumable) in the run folder."""
    from robust_ad import rundir
    from robust_ad.models.weights import load_encoder_weights
    from robust_ad.training.encoder import train_encoder as _train

    if config.encoder.weights:
        load_encoder_weights(model.encoder, config.encoder.weights)
        return {"encoder_source": str(config.encoder.weights), "encoder_minutes": 0.0}
    path = run_dir / rundir.ENCODER
    run = _train(train_images, config.encoder, None, device, config.seed, path, resume and path.is_file())
    model.encoder.load_state_dict(run.encoder.state_dict())
    return {"encoder_source": "trained", "encoder_minutes": run.minutes, "encoder_history": run.history}


def train(config: Config, out: str | Path, resume: bool = False, force: bool = False) -> Path:
    """``robust-ad train``: robust encoder, then decoder, then calibration; returns the run folder.

    With ``resume`` the run folder's own config.yaml is used and training continues where it stopped.
    """
    import time

    import torch

    from robust_ad import machine, rundir
    from robust_ad.data.images import write_image
    from robust_ad.device import resolve_device, seed_everything
    from robust_ad.fileio import prepare_output_dir, write_yaml
    from robust_ad.models.autoencoder import RobustAutoencoder
    from robust_ad.scoring.calibration import calibrate
    from robust_ad.scoring.scorer import AnomalyScorer
    from robust_ad.training import checkpoint
    from robust_ad.training.autoencoder import fit_decoder
    from robust_ad.training.data import load_split, open_dataset
    from robust_ad.training.encoder import to_tensor
    from robust_ad.training.noise import random_corruption
    from robust_ad.viz import reconstruction_grid

    run_dir = Path(out)
    if resume:
        config = rundir.read_config(run_dir)
    if config.mode not in ("detect", "denoise"):
        raise ConfigError(f"unknown mode '{config.mode}' (choose detect or denoise)")
    device = resolve_device(config.device)
    dataset = open_dataset(config)
    if not resume:
        prepare_output_dir(run_dir, force, "run folder", protect=[dataset.root])
        write_yaml(run_dir / rundir.CONFIG, config.to_dict())
    began = time.perf_counter()
    seed_everything(config.seed)
    train_set = load_split(dataset, "train", config)
    val_set = load_split(dataset, "val", config) if dataset.val else None
    model = RobustAutoencoder(config)
    info = _prepare_encoder(model, config, train_set.images, run_dir, resume, device)
    corrupt = random_corruption(config.denoise) if config.mode == "denoise" else None
    history = fit_decoder(
        model,
        train_set.images,
        val_set.images if val_set else None,
        device,
        config.seed,
        run_dir / rundir.CHECKPOINT,
        resume,
        corrupt,
    )
    _write_losses(run_dir / rundir.LOSSES, history)
    shown = val_set.images if val_set is not None else train_set.images
    inputs = shown[:8]
    if corrupt is not None:
        inputs = corrupt(to_tensor(inputs), torch.Generator().manual_seed(config.seed)).permute(0, 2, 3, 1).numpy()
    write_image(run_dir / rundir.GRID, reconstruction_grid(inputs, model.reconstruct(inputs)))
    extra = {}
    if config.mode == "detect":
        scorer = AnomalyScorer(model, config.scoring, config.data.image_size)
        if val_set is None:
            log.warning("no held-out normal images (val_fraction 0): calibrating on training images")
        write_json(run_dir / rundir.CALIBRATION, calibrate(scorer, train_set.images, shown, config.data.batch_size))
        extra["scorer"] = scorer.cpu().statistics()
    checkpoint.save(run_dir / rundir.MODEL, model.cpu().payload(extra))
    write_json(
        run_dir / rundir.TRAINING,
        {
            "category": config.category,
            "eps": config.encoder.eps,
            "device": str(device),
            "machine": machine.describe(),
            "minutes": (time.perf_counter() - began) / 60,
            "decoder_minutes": sum(row["seconds"] for row in history) / 60,
            **info,
        },
    )
    (run_dir / rundir.CHECKPOINT).unlink(missing_ok=True)
    return run_dir


def _torch_predictor(scorer, batch_size: int):
    from robust_ad.scoring.inference import predict

    def run(images):
        prediction = predict(scorer, images, batch_size)
        return prediction.maps, prediction.scores, prediction.raw_scores

    return run


def score(
    paths: list[str | Path],
    model: str | Path,
    out: str | Path = "results",
    threshold: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
    onnx: str | Path | None = None,
    force: bool = False,
):
    """``robust-ad score``: a verdict, score and heat-map overlay per image; scores.csv / scores.json in ``out``.

    ``onnx`` scores with the exported file through onnxruntime instead of torch (``model`` is then unused).
    """
    from robust_ad.device import resolve_device
    from robust_ad.fileio import prepare_output_dir
    from robust_ad.scoring.files import resolve_paths, score_files

    files = resolve_paths(paths)
    if onnx is not None:
        from robust_ad.runtime import InferenceSession

        session = InferenceSession(onnx, device=device)
        predictor, meta = session.predictor(batch_size), session.metadata
        size, calibrated, vmax = meta["image_size"], meta["threshold"], meta["map_vmax"]
    else:
        from robust_ad import rundir

        scorer = rundir.load_scorer(model, resolve_device(device))
        calibration = rundir.read_json(model, rundir.CALIBRATION)
        predictor, size = _torch_predictor(scorer, batch_size), scorer.train_size
        calibrated, vmax = calibration["threshold"], calibration["map_vmax"]
    out = prepare_output_dir(out, force, "results folder", protect=[*files, onnx or model])
    return score_files(files, predictor, size, calibrated if threshold is None else threshold, out, vmax, batch_size)


def evaluate(
    model: str | Path,
    data_root: str | Path | None = None,
    category: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    force: bool = False,
) -> dict:
    """``robust-ad eval``: metrics.json, roc.png and report.html for a model on its category's test split."""
    from robust_ad import machine, rundir
    from robust_ad.device import resolve_device
    from robust_ad.fileio import prepare_output_dir
    from robust_ad.report import html_report, roc_figure
    from robust_ad.scoring.evaluate import evaluate as _evaluate
    from robust_ad.scoring.inference import predict
    from robust_ad.training.data import load_split, open_dataset

    config = rundir.read_config(model)
    scorer = rundir.load_scorer(model, resolve_device(device))
    calibration = rundir.read_json(model, rundir.CALIBRATION)
    dataset = open_dataset(config, data_root, category)
    test = load_split(dataset, "test", config)
    out = prepare_output_dir(out or Path(model) / "eval", force, "evaluation folder", protect=[dataset.root, model])
    prediction = predict(scorer, test.images, batch_size, "evaluating")
    metrics = _evaluate(
        test, prediction, calibration["threshold"], {t: dataset.has_masks(t) for t in dataset.defect_types}
    )
    metrics.update(
        {
            "category": dataset.category,
            "model": str(model),
            "eps": config.encoder.eps,
            "image_size": config.data.image_size,
            "machine": machine.describe(),
        }
    )
    write_json(out / "metrics.json", metrics)
    if metrics["f1_max_threshold"] is not None:  # labelled defects: record the F1-optimal threshold too
        calibration["f1_threshold"] = metrics["f1_max_threshold"]
        calibration["f1_threshold_rule"] = (
            f"F1-optimal on the labelled test split of {dataset.root} (robust-ad eval); optimistic, since it is "
            "tuned on the evaluated images; use it with 'score --threshold'"
        )
        write_json(Path(model) / rundir.CALIBRATION, calibration)
    roc_figure(out / "roc.png", test, prediction, f"{dataset.category} (eps={config.encoder.eps})")
    html_report(out, metrics, test, prediction, calibration["map_vmax"])
    return metrics


def export(run_dir: str | Path, out: str | Path | None = None, **options) -> dict:
    """``robust-ad export``: see :func:`robust_ad.export.export` for the options."""
    from robust_ad.export import export as _export

    return _export(run_dir, out, **options)


def denoise(
    paths: list[str | Path],
    model: str | Path,
    out: str | Path,
    compare: bool = False,
    device: str = "auto",
    force: bool = False,
) -> tuple[list[dict], list[dict]]:
    """``robust-ad denoise``: clean copies of the images in ``out`` (same bit depth and channels)."""
    from collections import Counter

    from robust_ad.denoising import denoise_files
    from robust_ad.device import resolve_device
    from robust_ad.errors import DataError
    from robust_ad.fileio import prepare_output_dir
    from robust_ad.scoring.files import resolve_paths

    files = resolve_paths(paths)
    names = Counter(p.name for p in files)
    if max(names.values()) > 1:  # outputs keep the input names: one would silently replace the other
        clash = [str(p) for p in files if names[p.name] > 1][:2]
        raise DataError(
            f"two inputs share the file name {Path(clash[0]).name} ({', '.join(clash)}): denoise them "
            "into separate --out folders"
        )
    out = prepare_output_dir(out, force, "output folder", protect=[*files, model])
    return denoise_files(files, model, out, compare, resolve_device(device))


def evaluate_denoiser(
    model: str | Path,
    baseline: str | Path | None = None,
    data_root: str | Path | None = None,
    category: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
) -> list[dict]:
    """``robust-ad eval --mode denoise``: PSNR/SSIM vs the noisy input, OpenCV NLM and the eps=0 ``baseline``."""
    from robust_ad import machine, rundir
    from robust_ad.denoising import evaluate_denoising, load_denoiser
    from robust_ad.device import resolve_device
    from robust_ad.fileio import prepare_output_dir
    from robust_ad.training.data import load_split, open_dataset

    config = rundir.read_config(model)
    dev = resolve_device(device)
    models = {f"robust-ad (eps={config.encoder.eps})": load_denoiser(model, dev)}
    if baseline is not None:
        base_eps = rundir.read_config(baseline).encoder.eps
        models[f"robust-ad standard (eps={base_eps})"] = load_denoiser(baseline, dev)
    dataset = open_dataset(config, data_root, category)
    tune = load_split(dataset, "val", config).images if dataset.val else load_split(dataset, "train", config).images
    test = load_split(dataset, "test", config).images
    rows = evaluate_denoising(models, tune[:16], test, seed=config.seed)
    out = prepare_output_dir(out or Path(model) / "eval", force, "evaluation folder", protect=[dataset.root, model])
    write_json(
        out / "denoise_metrics.json",
        {"category": dataset.category, "model": str(model), "machine": machine.describe(), "rows": rows},
    )
    return rows
