"""Robust encoder training: every step trains on PGD adversaries of a proxy classification task.

``eps = 0`` runs the very same loop without the attack: the standard baseline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from robust_ad import __version__
from robust_ad.adversarial import pgd
from robust_ad.config import EncoderConfig
from robust_ad.errors import ModelError
from robust_ad.models.encoder import Encoder, ProxyClassifier
from robust_ad.progress import track
from robust_ad.tensors import batches, load_checkpoint, save_checkpoint, to_tensor
from robust_ad.training import proxy

log = logging.getLogger(__name__)
FORMAT = "robust-ad-encoder"


def build_encoder(config: EncoderConfig) -> Encoder:
    return Encoder(config.backbone, config.layer, config.feature_layers, config.width)


def _proxy_batch(
    task: str, x_all: torch.Tensor, y_all: torch.Tensor | None, index: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy task's inputs and targets for the images (and labels) at ``index``."""
    return proxy.make_batch(task, x_all[index], y_all[index] if y_all is not None else None, generator)


@dataclass
class EncoderRun:
    """A trained proxy classifier (its ``encoder`` is what the autoencoder uses) and its history."""

    classifier: ProxyClassifier
    config: EncoderConfig
    image_size: int = 0
    categories: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    minutes: float = 0.0

    @property
    def encoder(self) -> Encoder:
        return self.classifier.encoder

    def save(self, path: str | Path, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> Path:
        return save_checkpoint(
            path,
            {
                "format": FORMAT,
                "version": __version__,
                "config": self.config.model_dump(),
                "n_classes": self.classifier.head[-1].out_features,
                "image_size": self.image_size,
                "categories": self.categories,
                "model": self.classifier.state_dict(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "epoch": epoch,
                "history": self.history,
                "minutes": self.minutes,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> tuple[EncoderRun, dict]:
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            raise ModelError(f"{path}: not a robust-ad encoder checkpoint")
        config = EncoderConfig(**payload["config"])
        classifier = ProxyClassifier(build_encoder(config), payload["n_classes"])
        classifier.load_state_dict(payload["model"])
        run = cls(
            classifier,
            config,
            payload["image_size"],
            list(payload["categories"]),
            list(payload["history"]),
            payload["minutes"],
        )
        return run, payload


def train_encoder(
    images: np.ndarray,
    config: EncoderConfig,
    labels: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    categories: list[str] | None = None,
) -> EncoderRun:
    """Adversarially train an encoder on the proxy task built from ``images`` (N, H, W, 3 in [0, 1]).

    A checkpoint is written atomically after every epoch when ``checkpoint_path`` is given;
    ``resume`` continues from it.
    """
    n_labels = len(np.unique(labels)) if labels is not None else 0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = ProxyClassifier(build_encoder(config), proxy.n_classes(config.proxy_task, n_labels))
    run = EncoderRun(classifier, config, images.shape[1], list(categories or []))
    optimizer = torch.optim.Adam(run.classifier.parameters(), lr=config.lr)
    start = 0
    if resume:
        if checkpoint_path is None or not Path(checkpoint_path).is_file():
            raise ModelError(f"--resume: no checkpoint at {checkpoint_path} to resume from")
        loaded, payload = EncoderRun.load(checkpoint_path)
        run.classifier.load_state_dict(loaded.classifier.state_dict())
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        run.history, start, run.minutes = loaded.history, payload["epoch"], loaded.minutes
        generator.manual_seed(seed + start)
    device = torch.device(device)
    run.classifier.to(device)
    optimizer_to(optimizer, device)
    x_all = to_tensor(images)
    y_all = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        run.classifier.train()
        total, correct, loss_sum = 0, 0, 0.0
        steps = batches(len(x_all), config.batch_size, generator)
        for index in track(steps, f"encoder epoch {epoch + 1}/{config.epochs} (eps={config.eps})"):
            x, y = _proxy_batch(config.proxy_task, x_all, y_all, index, generator)
            x, y = x.to(device), y.to(device)
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
            x_adv = pgd(run.classifier, x, y, config.eps, config.norm, config.pgd_steps, config.step_size)
            logits = run.classifier(x_adv)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        recalibrate_batch_norm(run.classifier, x_all, y_all, config, generator, device)
        run.minutes += (time.perf_counter() - began) / 60
        run.history.append({"epoch": epoch + 1, "loss": loss_sum / total, "adv_train_acc": correct / total})
        log.info("encoder epoch %d: loss %.4f, train acc %.3f", epoch + 1, loss_sum / total, correct / total)
        if checkpoint_path is not None:
            run.save(checkpoint_path, epoch + 1, optimizer)
    run.classifier.eval()
    return run


def recalibrate_batch_norm(
    classifier: ProxyClassifier,
    x_all: torch.Tensor,
    y_all: torch.Tensor | None,
    config: EncoderConfig,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Recompute the batch-norm statistics with the current weights over proxy batches of the training images.

    The running averages lag behind weights that move fast on a small set of near-identical images; the lag
    can leave the eval-mode network (what PGD attacks and what the autoencoder uses) predicting one class.
    """
    proxy_batches = (
        _proxy_batch(config.proxy_task, x_all, y_all, index, generator)
        for index in batches(len(x_all), config.batch_size)
    )
    update_bn(proxy_batches, classifier, device)  # cumulative averages; restores eval/train mode itself


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a (resumed) optimizer's state to ``device``."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def evaluate_encoder(
    run: EncoderRun,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    eps: float | None = None,
    norm: str | None = None,
    steps: int = 20,
    restarts: int = 2,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Clean accuracy and accuracy under PGD (``steps`` steps, ``restarts`` random restarts) on held-out images.

    An image counts as robust only if every restart fails to flip it.
    """
    eps = run.config.eps if eps is None else eps
    norm = norm or run.config.norm
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = run.classifier.to(device).eval()
    x_all = to_tensor(images)
    y_all = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
    clean = robust = total = 0
    for index in track(batches(len(x_all), batch_size), "evaluating encoder"):
        x, y = _proxy_batch(run.config.proxy_task, x_all, y_all, index, generator)
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        clean += int(ok.sum())
        still = ok.clone()
        for _ in range(restarts if eps > 0 else 0):
            x_adv = pgd(model, x, y, eps, norm, steps, random_start=True)
            with torch.no_grad():
                still &= model(x_adv).argmax(1) == y
        robust += int(still.sum())
        total += len(y)
    return {
        "clean_acc": clean / total,
        "pgd_acc": robust / total,
        "eps": eps,
        "norm": norm,
        "steps": steps,
        "restarts": restarts,
        "n": total,
    }
