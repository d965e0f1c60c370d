"""Decoder training: invert the frozen robust encoder with pixel + feature + GAN losses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robust_ad.models.autoencoder import RobustAutoencoder
from robust_ad.models.decoder import PatchDiscriminator
from robust_ad.progress import track
from robust_ad.tensors import batches, load_checkpoint, save_checkpoint, to_tensor
from robust_ad.training import losses
from robust_ad.training.encoder import optimizer_to

log = logging.getLogger(__name__)
Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _losses(
    model: RobustAutoencoder, x_in: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction of ``x_in`` and its pixel and feature losses against the clean ``x``."""
    cfg = model.config
    x_hat = model(x_in)
    terms = {"pixel": losses.pixel_loss(x_hat, x, cfg.autoencoder.pixel_loss)}
    if cfg.autoencoder.w_feature > 0:
        layers = cfg.encoder.feature_layers
        with torch.no_grad():
            target = model.features(x)
        terms["feature"] = losses.feature_loss(model.features(x_hat), target, layers)
    return x_hat, terms


def _weighted(model: RobustAutoencoder, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    ae = model.config.autoencoder
    weights = {"pixel": ae.w_pixel, "feature": ae.w_feature, "gan": ae.w_gan}
    return sum(weights[name] * value for name, value in terms.items())


@torch.no_grad()
def validation_loss(
    model: RobustAutoencoder,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 32,
    corrupt: Corruption | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean pixel / feature / total (without GAN) loss on held-out normal images."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    x_all = to_tensor(images)
    for index in batches(len(x_all), batch_size):
        x = x_all[index].to(device)
        x_in = corrupt(x, generator) if corrupt is not None else x
        _, terms = _losses(model, x_in, x)
        terms["total"] = _weighted(model, terms)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(index)
    return {name: value / len(x_all) for name, value in sums.items()}


def fit_decoder(
    model: RobustAutoencoder,
    train_images: np.ndarray,
    val_images: np.ndarray | None,
    device: torch.device,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    corrupt: Corruption | None = None,
) -> list[dict[str, float]]:
    """Train the decoder (and the encoder only if ``finetune_encoder``); returns one row of losses per epoch.

    ``corrupt`` maps clean batches to corrupted inputs (denoising mode); targets stay clean.
    """
    cfg = model.config.autoencoder
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.encoder.requires_grad_(cfg.finetune_encoder)
    params = list(model.decoder.parameters()) + (list(model.encoder.parameters()) if cfg.finetune_encoder else [])
    opt_g = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999))
    disc = PatchDiscriminator(max(8, round(64 * cfg.decoder_width))) if cfg.w_gan > 0 else None
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999)) if disc is not None else None
    history: list[dict[str, float]] = []
    start = 0
    model.decoder.init_output(torch.from_numpy(train_images.reshape(-1, 3).mean(0)))
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        opt_g.load_state_dict(state["opt_g"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["opt_d"])
        history, start = state["history"], state["epoch"]
        generator.manual_seed(seed + start)
        log.info("resuming decoder training after epoch %d", start)
    model.to(device)
    optimizer_to(opt_g, device)
    if disc is not None:
        disc.to(device)
        optimizer_to(opt_d, device)
    x_all = to_tensor(train_images)
    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        model.train()
        if not cfg.finetune_encoder:
            model.encoder.eval()  # frozen: keep its batch-norm statistics
        sums: dict[str, float] = {}
        for index in track(
            batches(len(x_all), model.config.data.batch_size, generator), f"decoder epoch {epoch + 1}/{cfg.epochs}"
        ):
            x = x_all[index]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            x_in = corrupt(x, generator) if corrupt is not None else x
            x, x_in = x.to(device), x_in.to(device)
            x_hat, terms = _losses(model, x_in, x)
            if disc is not None:
                opt_d.zero_grad(set_to_none=True)
                d_loss = losses.discriminator_loss(disc(x), disc(x_hat.detach()), cfg.gan_loss)
                d_loss.backward()
                opt_d.step()
                terms["gan"] = losses.generator_loss(disc(x_hat), cfg.gan_loss)
                terms["disc"] = d_loss.detach()
            total = _weighted(model, {k: v for k, v in terms.items() if k != "disc"})
            opt_g.zero_grad(set_to_none=True)
            total.backward()
            opt_g.step()
            for name, value in {**terms, "total": total}.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(index)
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train_{name}": value / len(x_all) for name, value in sums.items()})
        if val_images is not None and len(val_images):
            val = validation_loss(model, val_images, device, corrupt=corrupt, seed=seed)
            row.update({f"val_{name}": value for name, value in val.items()})
        row["seconds"] = time.perf_counter() - began
        history.append(row)
        log.info("decoder epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "disc": disc.state_dict() if disc is not None else None,
                    "opt_d": opt_d.state_dict() if opt_d is not None else None,
                    "history": history,
                    "epoch": epoch + 1,
                },
            )
    model.eval()
    model.encoder.requires_grad_(False)
    return history
