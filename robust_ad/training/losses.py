"""Decoder losses: pixel, colour, robust-feature and adversarial (GAN). Each is switched off by a zero weight."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from robust_ad.errors import ConfigError


def pixel_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    if kind == "l2":
        return F.mse_loss(x_hat, x)
    raise ConfigError(f"unknown pixel loss '{kind}' (choose l1 or l2)")


def colour_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 distance of each image's mean R, G and B: the per-pixel losses leave a colour cast of a few grey
    levels that the feature and GAN losses do not see; this term holds the decoder to the image's colour."""
    return F.l1_loss(x_hat.mean((2, 3)), x.mean((2, 3)))


def feature_loss(
    feats_hat: Mapping[str, torch.Tensor], feats: Mapping[str, torch.Tensor], layers: list[str]
) -> torch.Tensor:
    """Mean over ``layers`` of the squared feature distance, relative to the features' own energy."""
    total = 0.0
    for layer in layers:
        target = feats[layer].detach()
        total = total + F.mse_loss(feats_hat[layer], target) / target.pow(2).mean().clamp_min(1e-8)
    return total / len(layers)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "standard":
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
    raise ConfigError(f"unknown GAN loss '{kind}' (choose hinge or standard)")


def generator_loss(fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return -fake.mean()
    if kind == "standard":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    raise ConfigError(f"unknown GAN loss '{kind}' (choose hinge or standard)")
