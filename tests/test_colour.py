"""The ``colour`` score component: each cell's mean colour less the image's, against its normal value there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robust_ad import rundir
from robust_ad.config import Config
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.scoring.calibration import fit_normalisation, fit_training_statistics
from robust_ad.scoring.scorer import COLOUR_GRID, AnomalyScorer, local_colour
from robust_ad.tensors import to_tensor


def _with_colour(config: Config) -> Config:
    weights = {**config.scoring.weights, "colour": 1.0}
    return config.model_copy(update={"scoring": config.scoring.model_copy(update={"weights": weights})})


def _calibrated(run: Path, category: str = "bottle") -> tuple[AnomalyScorer, Config, torch.Tensor]:
    """The run's networks with the colour component added, its statistics fitted on ``category``'s training images
    and its normalisation on their held-out normal ones."""
    config = _with_colour(rundir.read_config(run)).model_copy(update={"category": category})
    dataset = open_dataset(config)
    train = to_tensor(load_split(dataset, "train", config).images)
    scorer = AnomalyScorer(rundir.load_model(run), config.scoring, config.data.image_size).eval()
    fit_training_statistics(scorer, train.split(7))
    with torch.no_grad():
        fit_normalisation(scorer, scorer.component_maps(to_tensor(load_split(dataset, "val", config).images))[0])
    return scorer, config, train


def test_local_colour_is_each_cells_mean_less_the_images_and_ignores_a_tint() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 3, 24, 16)).astype(np.float32)
    ours = local_colour(torch.from_numpy(images), 4)
    cells = images.reshape(2, 3, 6, 4, 4, 4).mean((3, 5))
    np.testing.assert_allclose(ours.numpy(), cells - images.mean((2, 3), keepdims=True), atol=1e-6)
    tint = torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)  # the same added to every pixel of an image
    torch.testing.assert_close(local_colour(torch.from_numpy(images) + tint, 4), ours, atol=1e-6, rtol=0)


def test_a_discoloured_patch_of_a_normal_image_stands_out_in_the_colour_map(tiny_run: Path) -> None:
    """A patch of a woven fabric whose channels are scaled (texture kept, colour changed) scores far above its
    normal spread in the colour map, inside the patch against outside it. The component looks at the images
    alone, so the tiny bottle run's networks serve, with statistics of the fabric."""
    scorer, config, _ = _calibrated(tiny_run, "fabric")
    assert scorer.colour_cell == max(1, config.data.image_size // COLOUR_GRID)
    images = load_split(open_dataset(config), "val", config).images[:4].copy()
    region = (slice(8, 20), slice(8, 20))
    images[(slice(None), *region)] *= np.array([1.4, 0.75, 0.9], np.float32)
    images = images.clip(0, 1)
    with torch.no_grad():
        maps, _ = scorer.component_maps(to_tensor(images))
    k = scorer.components.index("colour")
    standardised = (maps[:, k] - scorer.map_mean[k]) / scorer.map_std[k]
    inside = torch.zeros(maps.shape[-2:], dtype=torch.bool)
    inside[region] = True
    assert float(standardised[:, inside].mean() - standardised[:, ~inside].mean()) > 10.0


def test_colour_statistics_are_the_per_location_moments_of_the_training_images(tiny_run: Path) -> None:
    """Calibration keeps the per-cell mean and (floored) variance of local_colour over the training images; a run
    without the component (the tiny run's recipe) keeps none, and the scorer saves and loads them with the rest."""
    scorer, _, train = _calibrated(tiny_run)
    colour = local_colour(train, scorer.colour_cell)
    var = colour.var(0, correction=0)
    torch.testing.assert_close(scorer.memory_mean_colour, colour.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.memory_var_colour, var + 1e-2 * var.mean() + 1e-6, atol=1e-5, rtol=1e-4)
    assert "memory_mean_colour" not in rundir.load_scorer(tiny_run).memory_statistics()
    again = AnomalyScorer(scorer.model, scorer.config, scorer.train_size)
    again.load_memory(scorer.memory_statistics())
    torch.testing.assert_close(again.memory_var_colour, scorer.memory_var_colour)


def test_the_fused_map_with_colour_is_the_fusion_of_the_calibrated_components(tiny_run: Path) -> None:
    """score_fusion 'map' weighs the colour cells' term with the others before resampling and smoothing once: the
    same map as fusing the smoothed components, at the training size and another."""
    scorer, _, train = _calibrated(tiny_run)
    scorer.config = scorer.config.model_copy(update={"score_fusion": "map"})
    for size in (32, 48):
        x = torch.nn.functional.interpolate(train[:3], size=(size, size), mode="bilinear")
        with torch.no_grad():
            maps, _ = scorer.component_maps(x)
            fused = scorer(x)[0]
        torch.testing.assert_close(fused, scorer.fuse(maps), atol=1e-5, rtol=1e-5)
