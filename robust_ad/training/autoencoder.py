"""Decoder (and denoiser) training: invert the frozen robust encoder with pixel + feature + GAN losses.

The loop is the training engine's (:mod:`robust_ad.training.engine`); this module says what one step is.
In denoising mode the input is corrupted and the target stays clean.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robust_ad.config import AutoencoderConfig
from robust_ad.models.autoencoder import RobustAutoencoder
from robust_ad.models.decoder import PatchDiscriminator
from robust_ad.training import losses
from robust_ad.training.averaging import MovingAverage
from robust_ad.training.encoder import as_dataset
from robust_ad.training.engine import Batch, Engine, Task, set_learning_rate

log = logging.getLogger(__name__)
Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DecoderTask(Task):
    """One step: the discriminator on real vs reconstructed images, then the decoder on its weighted losses."""

    def __init__(
        self, model: RobustAutoencoder, config: AutoencoderConfig, corrupt: Corruption | None, val: Dataset | None
    ):
        self.model, self.config, self.corrupt, self.val = model, config, corrupt, val
        model.encoder.requires_grad_(config.finetune_encoder)
        params = list(model.decoder.parameters()) + (
            list(model.encoder.parameters()) if config.finetune_encoder else []
        )
        self.modules: dict = {"model": model}
        beta1 = 0.5 if config.w_gan > 0 else 0.9  # 0.5 steadies adversarial training; else Adam's default
        self.optimizers: dict = {"opt_g": torch.optim.Adam(params, lr=config.lr, betas=(beta1, 0.999))}
        self.disc = None
        if config.w_gan > 0:
            self.disc = PatchDiscriminator(max(8, round(64 * config.decoder_width)))
            self.modules["disc"] = self.disc
            self.optimizers["opt_d"] = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr, betas=(0.0, 0.9))
        self.ema = MovingAverage(model.decoder, config.ema) if config.ema > 0 else None
        if self.ema is not None:
            self.modules["ema"] = self.ema  # checkpointed with the others

    def begin_epoch(self, engine: Engine) -> None:
        """The decoder's learning rate for this epoch: constant, or a cosine decay (a function of the epoch alone,
        so a resumed training continues on the same curve)."""
        set_learning_rate(
            self.optimizers["opt_g"], self.config.lr, self.config.lr_schedule, engine.epoch, engine.epochs
        )

    def train_mode(self) -> None:
        super().train_mode()
        if not self.config.finetune_encoder:
            self.model.encoder.eval()  # frozen: keep its batch-norm statistics

    def _losses(
        self, x_in: torch.Tensor, x: torch.Tensor, model: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction of ``x_in`` by ``model`` (default: the task's) and its pixel and feature losses
        against the clean ``x``."""
        x_hat = (self.model if model is None else model)(x_in)
        terms = {"pixel": losses.pixel_loss(x_hat.float(), x, self.config.pixel_loss)}
        if self.config.w_colour > 0:
            terms["colour"] = losses.colour_loss(x_hat.float(), x)
        if self.config.w_feature > 0:
            layers = self.model.encoder.feature_layers
            with torch.no_grad():
                target = self.model.features(x)
            terms["feature"] = losses.feature_loss(self.model.features(x_hat), target, layers)
        return x_hat, terms

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        weights = {"pixel": cfg.w_pixel, "colour": cfg.w_colour, "feature": cfg.w_feature, "gan": cfg.w_gan}
        return sum(weights[name] * value.float() for name, value in terms.items() if name in weights)

    def step(self, batch: Batch, engine: Engine) -> dict[str, torch.Tensor]:
        x = batch.images
        x_in = self.corrupt(x, batch.generator) if self.corrupt is not None else x
        with engine.autocast():
            x_hat, terms = self._losses(x_in, x, engine.trained("model"))
        if self.disc is not None:
            disc = engine.trained("disc")
            with engine.autocast():
                d_loss = losses.discriminator_loss(disc(x), disc(x_hat.detach()), self.config.gan_loss)
            engine.optimize(d_loss, self.optimizers["opt_d"])
            with engine.autocast():
                terms["gan"] = losses.generator_loss(self.disc(x_hat), self.config.gan_loss)
            terms["disc"] = d_loss.detach()
        total = self._weighted(terms)
        engine.optimize(total, self.optimizers["opt_g"])
        if self.ema is not None:
            self.ema.update(self.model.decoder)
        return {f"train_{name}": value.detach() for name, value in {**terms, "total": total}.items()}

    @torch.no_grad()
    def end_epoch(self, engine: Engine) -> dict[str, float]:
        """The epoch's decoder learning rate, and the mean pixel / feature / total (without GAN) loss on the
        held-out normal images."""
        lr = {"lr": self.optimizers["opt_g"].param_groups[0]["lr"]}
        if self.val is None or len(self.val) == 0:
            return lr
        self.model.eval()
        generator = torch.Generator().manual_seed(engine.seed)  # the same corruptions every epoch
        sums: dict[str, float] = {}
        with self.averaged():  # the model that training keeps
            for images, _ in engine.loader(dataset=self.val):
                x = images.to(engine.device)
                x_in = self.corrupt(x, generator) if self.corrupt is not None else x
                _, terms = self._losses(x_in, x)
                terms["total"] = self._weighted(terms)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(x)
        return lr | {f"val_{name}": value / len(self.val) for name, value in sums.items()}

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The model with its decoder's moving average in place of the decoder for the block (``ema``)."""
        if self.ema is None:
            yield
            return
        live = self.model.decoder
        self.model.decoder = self.ema.module.train(live.training)  # in eval mode its batch norms stay as averaged
        try:
            yield
        finally:
            self.model.decoder = live


def colour_error(images: np.ndarray, reconstructions: np.ndarray) -> list[float]:
    """Mean absolute difference of each image's mean R, G and B between images and reconstructions, in 8-bit
    grey levels: a colour cast of the decoder (goal: at most 2)."""
    return [float(v) for v in np.abs(reconstructions.mean((1, 2)) - images.mean((1, 2))).mean(0) * 255]


def mean_colour(dataset: Dataset, batch_size: int = 64) -> torch.Tensor:
    """The mean RGB of a dataset's images (one streaming pass)."""
    total, count = torch.zeros(3), 0
    for images, _ in DataLoader(dataset, batch_size):
        total += images.sum((0, 2, 3))
        count += images[:, 0].numel()
    return total / count


def fit_decoder(
    model: RobustAutoencoder,
    config: AutoencoderConfig,
    train: Dataset | np.ndarray,
    val: Dataset | np.ndarray | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    corrupt: Corruption | None = None,
    precision: str = "fp32",
    workers: int = 0,
    compile: bool = False,
    on_device: bool = False,
) -> list[dict[str, float]]:
    """Train the decoder (and the encoder only if ``finetune_encoder``); returns one row of losses per epoch."""
    train = as_dataset(train)
    torch.manual_seed(seed)
    task = DecoderTask(model, config, corrupt, as_dataset(val) if val is not None else None)
    model.decoder.init_output(mean_colour(train))  # a resumed checkpoint overwrites it
    engine = Engine(
        task,
        train,
        config.epochs,
        batch_size,
        device,
        seed,
        checkpoint_path,
        precision,
        workers,
        description="denoiser epoch" if corrupt is not None else "decoder epoch",
        compile=compile,
        on_device=on_device,
        rotate=config.augment == "dihedral",
    )
    history = engine.fit(resume and checkpoint_path is not None and Path(checkpoint_path).is_file())
    if task.ema is not None:
        model.decoder.load_state_dict(task.ema.module.state_dict())
    model.encoder.requires_grad_(False)
    return history
