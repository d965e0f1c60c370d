"""Batched inference of a scorer over in-memory images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robust_ad.device import full_float32
from robust_ad.progress import track
from robust_ad.scoring.scorer import AnomalyScorer
from robust_ad.tensors import to_images, to_tensor


@dataclass
class Prediction:
    """Per image: fused anomaly map (N, H, W), normalised and raw scores (N,), reconstructions (N, H, W, 3)."""

    maps: np.ndarray
    scores: np.ndarray
    raw_scores: np.ndarray
    reconstructions: np.ndarray


@torch.no_grad()
def predict(
    scorer: AnomalyScorer, images: np.ndarray, batch_size: int = 16, description: str = "scoring"
) -> Prediction:
    """Run ``scorer`` on (N, H, W, 3) float images in [0, 1]."""
    scorer.eval()
    device = scorer.score_mean.device
    x_all = to_tensor(images)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in track(range(0, len(x_all), batch_size), description, total=-(-len(x_all) // batch_size)):
        with full_float32():
            fused, score, raw, x_hat = scorer(x_all[start : start + batch_size].to(device))
        parts.append((fused.cpu().numpy(), score.cpu().numpy(), raw.cpu().numpy(), to_images(x_hat)))
    maps, scores, raw, recon = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Prediction(maps, scores, raw, recon)
