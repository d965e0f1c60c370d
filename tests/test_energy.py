"""The ``energy`` score component: the local energy of the residual's finest detail, two-sided against its normal
level at each location."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from robust_ad import rundir
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.scoring.calibration import fit_training_statistics
from robust_ad.scoring.scorer import ENERGY_FLOOR, ENERGY_WINDOW, AnomalyScorer, local_energy
from robust_ad.tensors import to_tensor


def _reference_energy(residual: np.ndarray) -> np.ndarray:
    """OpenCV's box filters with reflected borders (BORDER_REFLECT_101, torch's 'reflect')."""
    grey = residual.mean(2)
    detail = grey - cv2.blur(grey, (3, 3), borderType=cv2.BORDER_REFLECT_101)
    window = (ENERGY_WINDOW, ENERGY_WINDOW)
    return np.log(cv2.blur(detail * detail, window, borderType=cv2.BORDER_REFLECT_101) + ENERGY_FLOOR)


def test_local_energy_is_the_box_filtered_detail_energy_and_ignores_a_constant_per_image() -> None:
    rng = np.random.default_rng(0)
    residual = rng.normal(0, 0.05, (2, 24, 20, 3)).astype(np.float32)
    energy = local_energy(to_tensor(residual))
    assert energy.shape == (2, 1, 24, 20)
    for image, ours in zip(residual, energy, strict=True):
        np.testing.assert_allclose(ours[0].numpy(), _reference_energy(image), atol=1e-4)
    cast = to_tensor(residual) + torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)  # a colour cast, and its correction
    torch.testing.assert_close(local_energy(cast), energy, atol=1e-4, rtol=0)


def test_a_smoothed_patch_of_a_normal_image_stands_out_in_the_energy_map_alone(tiny_run: Path) -> None:
    """Blurring part of a normal image (its sensor noise and fine texture gone) leaves a residual too quiet there:
    the energy map, in units of its normal spread, is far higher inside than outside; the pixel residual, which
    only sees large residuals, is not."""
    scorer = rundir.load_scorer(tiny_run)
    assert "energy" in scorer.components  # a default component
    config = rundir.read_config(tiny_run)
    images = load_split(open_dataset(config), "val", config).images[:4].copy()
    region = (slice(8, 22), slice(8, 22))
    for image in images:
        image[region] = cv2.GaussianBlur(image, (0, 0), 2.0)[region]
    with torch.no_grad():
        maps, _ = scorer.component_maps(to_tensor(images))
    standardised = (maps - scorer.map_mean.view(1, -1, 1, 1)) / scorer.map_std.view(1, -1, 1, 1)
    inside = torch.zeros(maps.shape[-2:], dtype=torch.bool)
    inside[region] = True

    def contrast(component: str) -> float:
        m = standardised[:, scorer.components.index(component)]
        return float(m[:, inside].mean() - m[:, ~inside].mean())

    assert contrast("energy") > 2.0
    assert contrast("pixel") < contrast("energy") / 2


def test_energy_statistics_are_the_per_location_moments_of_the_training_residuals(tiny_run: Path) -> None:
    """Calibration keeps the per-pixel mean and (floored) variance of local_energy(x - reconstruction) over the
    training images; a scorer without the component keeps none and scores the other components the same."""
    config = rundir.read_config(tiny_run)
    train = to_tensor(load_split(open_dataset(config), "train", config).images)
    scorer = AnomalyScorer(rundir.load_model(tiny_run), config.scoring, config.data.image_size).eval()
    fit_training_statistics(scorer, train.split(7))
    with torch.no_grad():
        feats = scorer.model.features(train)
        energy = local_energy(train - scorer.model.decoder(feats[scorer.model.encoder.layer], train.shape[-2:]))
    var = energy.var(0, correction=0)
    torch.testing.assert_close(scorer.memory_mean_energy, energy.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(scorer.memory_var_energy, var + 1e-2 * var.mean() + 1e-6, atol=1e-4, rtol=1e-4)

    weights = {k: v for k, v in config.scoring.weights.items() if k != "energy"}
    without = AnomalyScorer(scorer.model, config.scoring.model_copy(update={"weights": weights}), 32).eval()
    fit_training_statistics(without, train.split(7))
    assert "energy" not in without.components and "memory_mean_energy" not in without.memory_statistics()
    with torch.no_grad():
        ours, theirs = scorer.component_maps(train[:3])[0], without.component_maps(train[:3])[0]
    torch.testing.assert_close(ours[:, : len(without.components)], theirs, atol=1e-5, rtol=1e-5)
