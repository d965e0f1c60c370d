"""Denoising: clean images from a denoising run, and its evaluation against classical and standard baselines."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from robust_ad import rundir
from robust_ad.data.images import like_raw, read_raw, to_float_rgb, write_image, write_raw
from robust_ad.errors import ConfigError, ImageReadError, ModelError
from robust_ad.fileio import write_atomic
from robust_ad.models.denoiser import SkipDenoiser
from robust_ad.models.folding import fold_batch_norms
from robust_ad.progress import track
from robust_ad.tensors import to_images, to_tensor
from robust_ad.training.noise import EVAL_LEVELS, NOISES, apply_noise, level_text

MAX_PSNR = 100.0  # dB: the PSNR given to an exact copy
NLM_STRENGTHS = (3, 6, 10, 15, 21, 30)  # OpenCV's h, tuned per noise and level on held-out images


def load_denoiser(run_dir: str | Path, device: torch.device | str = "cpu"):
    """A denoising run's network, ready for inference: eval mode, batch norms folded into their convolutions."""
    config = rundir.read_config(run_dir)
    if config.mode != "denoise":
        raise ModelError(f"{run_dir} is a detection model; train one with 'robust-ad train --mode denoise'")
    model = rundir.load_model(run_dir, device)
    fold_batch_norms(model)
    return model


def denoise_files(
    paths: list[Path],
    run_dir: str | Path,
    out: Path,
    compare: bool = False,
    device: str = "cpu",
    sigma: float | None = None,
    guard: bool | None = None,
    names: dict[Path, str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Denoise each file at its own resolution; outputs keep the input's bit depth and channels. ``sigma``: a
    known noise level in 8-bit grey levels, for the skip denoiser (which otherwise estimates it per image);
    ``guard``: turn its SURE guard on or off (default: as trained, ``denoise.guard``); ``names``: each file's
    output path in ``out`` (default: its name), and ``comparison/<that>.png`` with ``compare``.

    Returns (written, errors). ``out`` is a fresh folder that holds no input (``api.denoise`` makes it with
    ``fileio.output_folder``, which refuses input folders).
    """
    model = load_denoiser(run_dir, device)
    options = {} if sigma is None else {"sigma": sigma / 255}
    if (options or guard is not None) and not isinstance(model, SkipDenoiser):
        flag = "--sigma" if options else "--guard/--no-guard"
        raise ConfigError(f"{flag} needs a skip denoiser (denoise.architecture: skip); this one is a mirror decoder")
    if guard is not None:
        model.guard = guard
    written, errors = [], []
    for path in track(paths, "denoising"):
        name = names[path] if names else path.name
        target = out / name
        try:
            raw = read_raw(path)
        except ImageReadError as exc:  # listed by the caller (the CLI: 'skipped: ...')
            errors.append({"path": str(path), "error": str(exc)})
            continue
        noisy = to_float_rgb(raw)
        clean = model.reconstruct(noisy[None], **options)[0]
        result = like_raw(clean, raw)
        if np.array_equal(result, raw):  # left as it was (a clean frame): the file itself, not a re-encoded JPEG
            write_atomic(target, partial(shutil.copyfile, path))
        else:
            write_raw(target, result)
        row = {"path": str(path), "output": str(target)}
        if compare:
            row["comparison"] = str(out / "comparison" / f"{name}.png")
            write_image(row["comparison"], np.concatenate([noisy, clean], axis=1))
        written.append(row)
    return written, errors


def image_quality(clean: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over images (scikit-image); an image identical to its reference counts as
    ``MAX_PSNR`` dB (not infinity), so that means and JSON stay finite."""
    with np.errstate(divide="ignore"):
        psnr = [peak_signal_noise_ratio(c, r, data_range=1.0) for c, r in zip(clean, restored, strict=True)]
    psnr = [min(value, MAX_PSNR) for value in psnr]
    ssim = [structural_similarity(c, r, channel_axis=2, data_range=1.0) for c, r in zip(clean, restored, strict=True)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def _nlm(images: np.ndarray, strength: float) -> np.ndarray:
    out = []
    for image in images:
        bgr = (image[:, :, ::-1] * 255).round().astype(np.uint8)
        out.append(cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21)[:, :, ::-1] / 255.0)
    return np.stack(out).astype(np.float32)


def corrupt_images(images: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] with ``kind`` noise at ``level``, deterministic by ``seed``."""
    return to_images(apply_noise(to_tensor(images), kind, level, torch.Generator().manual_seed(seed)))


Baseline = Callable[[np.ndarray, str, float], np.ndarray | None]  # (noisy, kind, level) -> restored or None


def evaluate_denoising(
    models: dict[str, torch.nn.Module],
    tune: np.ndarray,
    test: np.ndarray,
    noises: list[str] | None = None,
    seed: int = 0,
    baselines: dict[str, Baseline] | None = None,
    examples: dict[str, dict[str, tuple[np.ndarray, float]]] | None = None,
) -> list[dict]:
    """PSNR / SSIM and milliseconds per megapixel per noise, level and method: the noisy input, OpenCV NLM (h tuned
    on ``tune``), ``baselines`` (which may decline a noise by returning None) and ``models``. The first rows are
    the clean images themselves given as input (noise 'none'): a denoiser must not make them worse. A dict given
    as ``examples`` receives, per setting (its noise and level as :func:`level_text` says it), each method's
    result on the first test image and its PSNR (:func:`robust_ad.viz.denoising_grid` draws them)."""
    rows = []
    megapixels = test[..., 0].size / 1e6
    settings = [("none", 0.0)] + [(kind, level) for kind in noises or list(NOISES) for level in EVAL_LEVELS[kind]]
    for kind, level in settings:
        if kind == "none":
            noisy_tune, noisy = tune, test
        else:
            noisy_tune, noisy = corrupt_images(tune, kind, level, seed), corrupt_images(test, kind, level, seed + 1)
        best = max(NLM_STRENGTHS, key=lambda h: image_quality(tune, _nlm(noisy_tune, h))[0])
        methods: dict[str, Callable[[], np.ndarray | None]] = {
            "noisy input": partial(np.asarray, noisy),
            f"OpenCV NLM (h={best})": partial(_nlm, noisy, best),
        }
        methods |= {name: partial(baseline, noisy, kind, level) for name, baseline in (baselines or {}).items()}
        methods |= {name: partial(model.reconstruct, noisy) for name, model in models.items()}
        for method, run in methods.items():
            began = time.perf_counter()
            restored = run()
            if restored is None:
                continue
            ms = (time.perf_counter() - began) * 1000 / megapixels if method != "noisy input" else 0.0
            psnr, ssim = image_quality(test, restored)
            rows.append({"noise": kind, "level": level, "method": method, "psnr": psnr, "ssim": ssim, "ms_per_mp": ms})
            if examples is not None:
                label = "none" if kind == "none" else f"{kind} {level_text(kind, level)}"
                setting = examples.setdefault(label, {})
                setting[method] = (restored[0], image_quality(test[:1], restored[:1])[0])
    return rows
