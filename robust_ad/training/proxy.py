"""Proxy classification tasks that train the robust encoder without ImageNet.

- ``corruption``: 5 classes made from normal images alone: clean, cut-paste patch, noisy patch,
  colour-shifted patch, blurred patch (the encoder learns what local irregularities look like).
- ``rotation``: 4 classes, the image rotated by 0/90/180/270 degrees (suits objects with a pose).
- ``labels``: the labels the user has, e.g. which product category an image belongs to, or which source
  photograph a corpus crop comes from (``encoder pretrain``).
- ``labels+corruption``: both at once, one head each: which label, and which corruption was applied. The
  target is encoded as ``label * 5 + corruption`` and the loss is the sum of the two cross-entropies, so PGD
  attacks both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robust_ad.errors import ConfigError

TASKS = {"corruption": 5, "rotation": 4}
N_CORRUPTIONS = TASKS["corruption"]


@dataclass(frozen=True)
class Proxy:
    """One proxy task: how a batch of normal images becomes (inputs, targets), and how targets are scored."""

    task: str
    n_labels: int = 0

    def __post_init__(self) -> None:
        if self.task in ("labels", "labels+corruption"):
            if self.n_labels < 2:
                raise ConfigError(f"proxy task '{self.task}' needs images of at least two labels (e.g. two categories)")
        elif self.task not in TASKS:
            raise ConfigError(f"unknown proxy task '{self.task}' (choose from corruption, rotation, labels)")

    @property
    def uses_labels(self) -> bool:
        return self.task.startswith("labels")

    @property
    def n_outputs(self) -> int:
        """Logits the classifier head produces."""
        if self.task == "labels":
            return self.n_labels
        if self.task == "labels+corruption":
            return self.n_labels + N_CORRUPTIONS
        return TASKS[self.task]

    def batch(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the task for one batch of normal images (and their labels)."""
        n = images.shape[0]
        if self.uses_labels and labels is None:
            raise ConfigError(f"proxy task '{self.task}' needs labelled images")
        if self.task == "labels":
            return images, labels
        kinds = self.task.removeprefix("labels+")
        classes = torch.randint(0, TASKS[kinds], (n,), generator=generator)
        if kinds == "rotation":
            rotated = [torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(images, classes, strict=True)]
            return torch.stack(rotated), classes.to(images.device)
        x, classes = _corrupt(images, classes, generator), classes.to(images.device)
        return (x, labels.to(images.device) * N_CORRUPTIONS + classes) if self.uses_labels else (x, classes)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; for the joint task, the sum over its two heads."""
        if self.task != "labels+corruption":
            return F.cross_entropy(logits, targets)
        n = self.n_labels
        return F.cross_entropy(logits[:, :n], targets // N_CORRUPTIONS) + F.cross_entropy(
            logits[:, n:], targets % N_CORRUPTIONS
        )

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted targets, encoded as the targets are (a joint prediction is right only if both heads are)."""
        if self.task != "labels+corruption":
            return logits.argmax(1)
        n = self.n_labels
        return logits[:, :n].argmax(1) * N_CORRUPTIONS + logits[:, n:].argmax(1)


def _patch_boxes(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    side = torch.randint(max(2, size // 8), max(3, size // 3), (n,), generator=generator)
    y0 = (torch.rand(n, generator=generator) * (size - side)).long()
    x0 = (torch.rand(n, generator=generator) * (size - side)).long()
    return torch.stack([y0, x0, side], 1)


def _corrupt(images: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = images.clone()
    n, _, h, w = images.shape
    boxes = _patch_boxes(n, min(h, w), generator)
    blurred = F.avg_pool2d(images, 5, 1, 2, count_include_pad=False)
    for i, (cls, (y0, x0, side)) in enumerate(zip(classes.tolist(), boxes.tolist(), strict=True)):
        region = (slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
        if cls == 1:  # cut-paste from elsewhere in the same image
            sy, sx = (int(torch.randint(0, d - side + 1, (1,), generator=generator)) for d in (h, w))
            out[i][region] = images[i, :, sy : sy + side, sx : sx + side]
        elif cls == 2:
            noise = torch.randn(3, side, side, generator=generator).to(images) * 0.15
            out[i][region] = images[i][region] + noise
        elif cls == 3:
            gains = 1 + (torch.rand(3, 1, 1, generator=generator).to(images) - 0.5) * 0.8
            out[i][region] = images[i][region] * gains
        elif cls == 4:
            out[i][region] = blurred[i][region]
    return out.clamp(0, 1)
