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


def _shifted(source: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, height, width): pixel (y, x) of image i is ``source[i, :, y - top[i], x - left[i]]``, clamped to
    the source's edges (one gather for the batch)."""
    n, c, source_h, source_w = source.shape
    ys = (torch.arange(height, device=source.device) - top[:, None]).clamp(0, source_h - 1)
    xs = (torch.arange(width, device=source.device) - left[:, None]).clamp(0, source_w - 1)
    index = (ys[:, :, None] * source_w + xs[:, None, :]).view(n, 1, -1).expand(n, c, -1)
    return source.flatten(2).gather(2, index).view(n, c, height, width)


def _corrupt(images: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's corruption (``classes``) in one random square patch, for the whole batch at once (no
    per-image work: on a GPU the batch stays on the device; the random draws come from ``generator``)."""
    n, _, h, w = images.shape
    y0, x0, side = _patch_boxes(n, min(h, w), generator).unbind(1)
    source_y, source_x = ((torch.rand(n, generator=generator) * (d - side + 1)).long() for d in (h, w))
    noise = torch.randn(n, 3, int(side.max()), int(side.max()), generator=generator) * 0.15
    gains = 1 + (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.8
    y0, x0, side, source_y, source_x, noise, gains, classes = (
        t.to(images.device) for t in (y0, x0, side, source_y, source_x, noise, gains, classes)
    )
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])
    patch = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (N, 1, H, W)
    variants = {
        1: _shifted(images, y0 - source_y, x0 - source_x, h, w),  # cut-paste from elsewhere in the same image
        2: images + _shifted(noise.to(images.dtype), y0, x0, h, w),
        3: images * gains.to(images.dtype),
        4: F.avg_pool2d(images, 5, 1, 2, count_include_pad=False),
    }
    out = images
    for cls, variant in variants.items():
        out = torch.where(patch & (classes == cls).view(n, 1, 1, 1), variant, out)
    return out.clamp(0, 1)
