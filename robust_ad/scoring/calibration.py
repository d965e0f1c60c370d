"""Calibration on normal images only: memory statistics, component normalisation, score threshold."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

from robust_ad.device import full_float32
from robust_ad.scoring.coreset import ReservoirSample, greedy_coreset
from robust_ad.scoring.scorer import AnomalyScorer, local_colour, local_energy
from robust_ad.tensors import to_tensor

log = logging.getLogger(__name__)
MIN_HELD_OUT = 5  # normal images to calibrate on, below which calibrate warns
MIN_CALIBRATION = 2  # below which there is no spread to normalise by: every other image scores 1e6 or more


@torch.no_grad()
def fit_training_statistics(scorer: AnomalyScorer, batches: Iterable[torch.Tensor]) -> None:
    """From the normal training images, streamed over batches of (N, 3, S, S) images (memory does not grow with
    their number): the per-location mean and variance of their features (at the training size) and, where the
    ``energy`` and ``colour`` components are used, of their residuals' local energy (:func:`local_energy`) and of
    their own local colour (:func:`local_colour`); the decoder's colour response (:func:`fit_colour_response`;
    corrected in every reconstruction unless the recipe's ``scoring.remove_colour_cast`` is false); and, where the
    ``nearest`` component is used, its bank: a coreset of ``nearest_bank`` of the vectors it compares
    (:meth:`AnomalyScorer.nearest_features`), chosen from a uniform sample of ten times as many."""
    scorer.eval()
    device = scorer.score_mean.device
    scorer.colour_offset.zero_()
    scorer.colour_matrix.copy_(torch.eye(3))
    names = [*scorer.layers, *(c for c in ("energy", "colour") if c in scorer.components)]
    sums = {k: 0.0 for k in names}
    squares = {k: 0.0 for k in names}
    colours = []  # (N, 2, 3): each image's mean colour and its reconstruction's, six numbers an image
    n = 0
    pool = ReservoirSample(10 * scorer.config.nearest_bank) if "nearest" in scorer.components else None
    for images in batches:
        images = scorer.enlarge(images.to(device))  # as the networks see them
        feats = dict(scorer.model.features(images))
        if "colour" in names:
            feats["colour"] = local_colour(images, scorer.colour_cell)
        if scorer.config.remove_colour_cast or "energy" in names:  # the decoder runs for these alone
            reconstructed = scorer.reconstruction(feats, images.shape[-2:])
            colours.append(torch.stack([images.mean((2, 3)), reconstructed.mean((2, 3))], 1).double().cpu())
            # the colour correction fitted below adds a constant to each reconstruction: its residual's local energy
            # stays the same (except where the correction clips)
            feats["energy"] = local_energy(images - reconstructed)
        n += len(images)
        for layer in names:
            sums[layer] = sums[layer] + feats[layer].double().sum(0)
            squares[layer] = squares[layer] + feats[layer].double().pow(2).sum(0)
        if pool is not None:
            pool.add(scorer.nearest_features(feats).flatten(2).transpose(1, 2).flatten(0, 1))
    statistics = {}
    for layer in names:
        mean = sums[layer] / n
        var = (squares[layer] / n - mean.pow(2)).clamp_min(0)
        # a floor keeps near-constant channels from dominating the distance
        var = var + 1e-2 * var.mean() + 1e-6
        statistics[f"memory_mean_{layer}"], statistics[f"memory_var_{layer}"] = mean.float(), var.float()
    if pool is not None:
        statistics["memory_bank"] = greedy_coreset(pool.rows, scorer.config.nearest_bank)
    scorer.load_memory(statistics)
    if scorer.config.remove_colour_cast:
        matrix, offset = fit_colour_response(torch.cat(colours))
        scorer.colour_matrix.copy_(matrix)
        scorer.colour_offset.copy_(offset)


def fit_colour_response(colours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 x 3 matrix M and offset o such that M @ m - o best predicts an image's mean colour (RGB) from its
    reconstruction's m, from ``colours`` (N, 2, 3): each image's mean colour, then its reconstruction's. Least
    squares, ridge-shrunk toward the identity by as much as one grey level of spread in every image's colour
    weighs: where the reconstructions' colours spread far more than that, the data decide; where they hardly
    spread (no response to measure), M stays the identity and o is the mean cast."""
    image, reconstructed = colours[:, 0], colours[:, 1]
    centred_image, centred = image - image.mean(0), reconstructed - reconstructed.mean(0)
    ridge = len(colours) / 255**2 * torch.eye(3, dtype=colours.dtype)
    matrix = torch.linalg.solve(centred.T @ centred + ridge, centred.T @ centred_image + ridge).T
    return matrix.float(), (matrix @ reconstructed.mean(0) - image.mean(0)).float()


def fit_normalisation(scorer: AnomalyScorer, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the component maps (N, K, H, W) of held-out normal images, on the scorer's device: each component's
    pixel mean and std (the fused map), the mean and std of each component's image scores (score_fusion
    'components'), and of the raw image scores. Returns their fused maps (N, H, W) and normalised scores (N,)."""
    scorer.map_mean.copy_(maps.mean((0, 2, 3)))
    scorer.map_std.copy_(maps.std((0, 2, 3)).clamp_min(1e-8))
    component_scores = scorer.component_scores(maps)
    scorer.component_score_mean.copy_(component_scores.mean(0))
    scorer.component_score_std.copy_(component_scores.std(0, correction=0).clamp_min(1e-6))
    raw = scorer.image_raw(maps)
    scorer.score_mean.fill_(float(raw.mean()))
    scorer.score_std.fill_(float(raw.std(correction=0).clamp_min(1e-6)))
    return scorer.fuse(maps), (raw - scorer.score_mean) / scorer.score_std


class ChannelSpread:
    """The largest difference between an image's channels over the training images (about 0 when all are grey: a
    monochrome camera), and the range of their mean colours (per channel, lowest and highest). Scoring compares
    frames with both (robust_ad.runtime.colour_warning, brightness_warning)."""

    def __init__(self) -> None:
        self.spread = 0.0
        self.low, self.high = torch.full((3,), math.inf), torch.full((3,), -math.inf)

    def observe(self, batch: torch.Tensor) -> torch.Tensor:
        self.spread = max(self.spread, float((batch.amax(1) - batch.amin(1)).amax()))
        means = batch.float().mean((2, 3)).cpu()
        self.low, self.high = torch.minimum(self.low, means.amin(0)), torch.maximum(self.high, means.amax(0))
        return batch

    def colour_range(self) -> list[list[float]] | None:
        """[[lowest R, G, B], [highest R, G, B]] of the training images' mean colours (None before any)."""
        return None if torch.isinf(self.low).any() else [self.low.tolist(), self.high.tolist()]


@torch.no_grad()
@full_float32()
def calibrate(
    scorer: AnomalyScorer,
    train_batches: Iterable[torch.Tensor],
    val_images: np.ndarray,
    batch_size: int = 16,
    held_out: bool = True,
) -> dict:
    """Fit every statistic of ``scorer`` and return the calibration record (``calibration.json``).

    ``train_batches`` streams the normal training images; the threshold is the ``threshold_quantile`` of the
    normalised scores of the normal ``val_images``: held out, unless ``held_out`` is false (training images, where
    no held-out ones exist, which the threshold rule then says). Fewer than MIN_HELD_OUT of them warn: a mean,
    spread and quantile of a handful of images do not describe normal parts.
    """
    if not held_out:
        log.warning("no held-out normal images: calibrating on training images")
    if len(val_images) < MIN_HELD_OUT:
        log.warning(
            "calibrating on %d normal images: the normalisation and threshold are unreliable below %d; add normal "
            "images (or raise data.val_fraction)",
            len(val_images),
            MIN_HELD_OUT,
        )
    channels = ChannelSpread()
    fit_training_statistics(scorer, map(channels.observe, train_batches))
    device = scorer.score_mean.device
    x_val = to_tensor(val_images)
    maps = torch.cat(
        [scorer.component_maps(x_val[s : s + batch_size].to(device))[0].cpu() for s in range(0, len(x_val), batch_size)]
    )
    fused, normalised = (t.cpu() for t in fit_normalisation(scorer, maps.to(device)))
    quantile = scorer.config.threshold_quantile
    statistics = {
        "weight": scorer.weights,
        "mean": scorer.map_mean,
        "std": scorer.map_std,
        "score_mean": scorer.component_score_mean,
        "score_std": scorer.component_score_std,
    }
    return {
        "threshold": float(np.quantile(normalised.numpy(), quantile)),
        "threshold_rule": f"quantile {quantile} of the normalised scores of {len(val_images)} "
        + ("held-out normal images" if held_out else "normal training images (none held out)"),
        "score_mean": float(scorer.score_mean),
        "score_std": float(scorer.score_std),
        "map_vmax": float(torch.quantile(fused.flatten()[:: max(1, fused.numel() // 1_000_000)], 0.999)) * 2,
        "components": {
            name: {key: float(values[k]) for key, values in statistics.items()}
            for k, name in enumerate(scorer.components)
        },
        "image_score": scorer.config.image_score,
        "score_fusion": scorer.config.score_fusion,
        "image_size": scorer.train_size,
        "train_channel_spread": channels.spread,
        "train_colour_range": channels.colour_range(),
        "colour_offset": [float(v) for v in scorer.colour_offset],
        "colour_matrix": scorer.colour_matrix.tolist(),
        "normal_scores": [float(v) for v in normalised],
    }
