"""Robust encoder training: every step trains on PGD adversaries of a proxy classification task.

``eps = 0`` runs the very same loop without the attack: the standard baseline. The loop itself is the
training engine's (:mod:`robust_ad.training.engine`); this module says what one step is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset

from robust_ad import __version__, machine
from robust_ad.adversarial import pgd
from robust_ad.config import EncoderConfig
from robust_ad.data.torchdata import ArrayImages
from robust_ad.errors import ModelError
from robust_ad.models.encoder import Encoder, ProxyClassifier
from robust_ad.progress import track
from robust_ad.tensors import load_checkpoint
from robust_ad.training import proxy
from robust_ad.training.build import build_encoder
from robust_ad.training.engine import Batch, Engine, Task, set_learning_rate

log = logging.getLogger(__name__)
FORMAT = "robust-ad-encoder"


def as_dataset(images: Dataset | np.ndarray, labels: np.ndarray | None = None) -> Dataset:
    """A ``torch`` dataset of (image, label) from a dataset or from (N, H, W, 3) arrays."""
    return ArrayImages(images, labels) if isinstance(images, np.ndarray) else images


def _image_size(dataset: Dataset) -> int:
    return int(dataset[0][0].shape[-1])


@dataclass
class EncoderRun:
    """A trained proxy classifier (its ``encoder`` is what the autoencoder uses) and its history."""

    classifier: ProxyClassifier
    config: EncoderConfig
    proxy: proxy.Proxy
    image_size: int = 0
    categories: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def encoder(self) -> Encoder:
        return self.classifier.encoder

    @property
    def minutes(self) -> float:
        return sum(row["seconds"] for row in self.history) / 60

    @classmethod
    def load(cls, path: str | Path) -> tuple[EncoderRun, dict]:
        """An encoder file written by ``encoder train`` (the training engine's checkpoint of an EncoderTask)."""
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            raise ModelError(f"{path}: not a robust-ad encoder checkpoint")
        if "modules" not in payload:
            raise ModelError(f"{path}: an encoder file of an older robust-ad; train it again with 'encoder train'")
        config = EncoderConfig(**payload["config"])
        classifier = ProxyClassifier(build_encoder(config), payload["n_classes"])
        run_proxy = proxy.Proxy(config.proxy_task, payload.get("n_labels", payload["n_classes"]))
        classifier.load_state_dict(payload["modules"]["classifier"])
        categories, history = list(payload["categories"]), list(payload["history"])
        return cls(classifier, config, run_proxy, payload["image_size"], categories, history), payload


def file_architecture(path: str | Path) -> dict[str, Any] | None:
    """The backbone, width and eps that a robust-ad encoder file (``encoder train`` / ``encoder pretrain``) records,
    or None for other weights files (torchvision's, the ``robustness`` library's), which do not say."""
    try:
        payload = load_checkpoint(path)
    except ModelError:
        return None
    if payload.get("format") != FORMAT or not isinstance(payload.get("config"), dict):
        return None
    config = EncoderConfig(**payload["config"])
    return {"backbone": config.backbone, "width": config.width, "eps": config.eps}


class EncoderTask(Task):
    """One step: a proxy batch, its PGD adversary within eps, a classification step on the adversary."""

    def __init__(
        self,
        classifier: ProxyClassifier,
        config: EncoderConfig,
        task: proxy.Proxy,
        image_size: int,
        categories: list[str],
    ):
        self.classifier, self.config, self.proxy = classifier, config, task
        self.image_size, self.categories = image_size, categories
        self.modules = {"classifier": classifier}
        self.optimizers = {"optimizer": torch.optim.Adam(classifier.parameters(), lr=config.lr)}

    def _proxy(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        return self.proxy.batch(images, labels if self.proxy.uses_labels else None, generator)

    def step(self, batch: Batch, engine: Engine) -> dict[str, torch.Tensor]:
        x, y = self._proxy(batch.images, batch.labels, batch.generator)
        cfg, loss_fn = self.config, self.proxy.loss
        with engine.autocast():
            x_adv = pgd(self.classifier, x, y, cfg.eps, cfg.norm, cfg.pgd_steps, cfg.step_size, loss_fn=loss_fn)
            logits = engine.trained("classifier")(x_adv)
            loss = loss_fn(logits.float(), y)
        engine.optimize(loss, self.optimizers["optimizer"])
        return {"loss": loss.detach(), "adv_train_acc": (self.proxy.predict(logits) == y).float().mean()}

    def begin_epoch(self, engine: Engine) -> None:
        set_learning_rate(
            self.optimizers["optimizer"], self.config.lr, self.config.lr_schedule, engine.epoch, engine.epochs
        )

    def end_epoch(self, engine: Engine) -> dict[str, float]:
        """Recompute the batch-norm statistics with the current weights over proxy batches of the images; return
        the epoch's learning rate.

        The running averages lag behind weights that move fast on a small set of near-identical images; the
        lag can leave the eval-mode network (what PGD attacks and what the autoencoder uses) predicting one
        class.
        """
        proxy_batches = (
            self._proxy(engine.augment(images.to(engine.device)), labels, engine.generator)[0]
            for images, labels in engine.loader()
        )
        update_bn(proxy_batches, self.classifier, engine.device)  # restores eval/train mode itself
        return {"lr": self.optimizers["optimizer"].param_groups[0]["lr"]}

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "version": __version__,
            "config": self.config.model_dump(),
            "n_classes": self.classifier.head[-1].out_features,
            "n_labels": self.proxy.n_labels,
            "image_size": self.image_size,
            "categories": self.categories,
            "machine": machine.describe(),  # where it trained (the model card's timings are this machine's)
        }


def train_encoder(
    images: Dataset | np.ndarray,
    config: EncoderConfig,
    labels: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    categories: list[str] | None = None,
    precision: str = "fp32",
    workers: int = 0,
    initial: Encoder | None = None,
    compile: bool = False,
    crop: int | None = None,
    on_device: bool = False,
) -> EncoderRun:
    """Adversarially train an encoder on the proxy task built from ``images`` (a dataset of (image, label),
    or (N, H, W, 3) arrays in [0, 1] with optional ``labels``), from ``initial``'s weights when given (a
    fine-tune of a pretrained encoder) or from scratch. With ``crop``, it trains on random crops of the images
    resized to that size (the engine's augmentation).

    ``checkpoint_path`` is written atomically after every epoch and is the encoder file; ``resume`` continues
    from it.
    """
    dataset = as_dataset(images, labels)
    all_labels = getattr(dataset, "labels", None)  # the datasets here carry them; others are read once
    if all_labels is None:
        all_labels = [dataset[i][1] for i in range(len(dataset))]
    task = proxy.Proxy(config.proxy_task, len({int(label) for label in all_labels}))
    torch.manual_seed(seed)
    classifier = ProxyClassifier(build_encoder(config), task.n_outputs)
    if initial is not None:
        classifier.encoder.load_state_dict(initial.state_dict())
    task = EncoderTask(classifier, config, task, crop or _image_size(dataset), list(categories or []))
    engine = Engine(
        task,
        dataset,
        config.epochs,
        config.batch_size,
        device,
        seed,
        checkpoint_path,
        precision,
        workers,
        description=f"encoder epoch (eps={config.eps})",
        compile=compile,
        crop=crop,
        on_device=on_device,
    )
    history = engine.fit(resume)
    return EncoderRun(classifier, config, task.proxy, task.image_size, task.categories, history)


def evaluate_encoder(
    run: EncoderRun,
    images: Dataset | np.ndarray,
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
    task = run.proxy
    batches = (
        task.batch(x, y if task.uses_labels else None, generator)
        for x, y in DataLoader(as_dataset(images, labels), batch_size)
    )
    return attack_accuracy(model, batches, eps, norm, steps, restarts, device, task)


def attack_accuracy(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    eps: float,
    norm: str,
    steps: int,
    restarts: int,
    device: torch.device | str,
    task: proxy.Proxy | None = None,
) -> dict:
    """Clean accuracy and accuracy under PGD over (images, targets) batches of ``task`` (default: one plain
    classification). A target of None takes the model's own clean prediction: the accuracy under attack is then
    the share of predictions the attack cannot move."""
    loss_fn = task.loss if task else F.cross_entropy

    def predict(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(inputs)
        return task.predict(logits) if task else logits.argmax(1)

    clean = robust = total = 0
    for x, y in track(batches, "attacking"):
        x = x.to(device)
        predicted = predict(x)
        y = predicted if y is None else y.to(device)
        ok = predicted == y
        clean += int(ok.sum())
        still = ok.clone()
        for _ in range(restarts if eps > 0 else 0):
            x_adv = pgd(model, x, y, eps, norm, steps, random_start=True, loss_fn=loss_fn)
            still &= predict(x_adv) == y
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
