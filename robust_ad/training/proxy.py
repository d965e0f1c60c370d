"""Proxy classification tasks that train the robust encoder without ImageNet.

- ``corruption``: 5 classes made from normal images alone: clean, cut-paste patch, noisy patch,
  colour-shifted patch, blurred patch (the encoder learns what local irregularities look like).
- ``rotation``: 4 classes, the image rotated by 0/90/180/270 degrees (suits objects with a pose).
- ``labels``: the labels the user has, e.g. which product category an image belongs to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robust_ad.errors import ConfigError

TASKS = {"corruption": 5, "rotation": 4}


def n_classes(task: str, n_labels: int = 0) -> int:
    if task == "labels":
        if n_labels < 2:
            raise ConfigError("proxy task 'labels' needs images of at least two labels (e.g. two categories)")
        return n_labels
    if task not in TASKS:
        raise ConfigError(f"unknown proxy task '{task}' (choose from corruption, rotation, labels)")
    return TASKS[task]


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


def make_batch(
    task: str, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the proxy task for one batch of normal images."""
    n = images.shape[0]
    if task == "labels":
        if labels is None:
            raise ConfigError("proxy task 'labels' needs labelled images")
        return images, labels
    classes = torch.randint(0, TASKS[task], (n,), generator=generator)
    if task == "rotation":
        rotated = [torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(images, classes, strict=True)]
        return torch.stack(rotated), classes.to(images.device)
    return _corrupt(images, classes, generator), classes.to(images.device)
