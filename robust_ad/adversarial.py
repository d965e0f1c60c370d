"""PGD attacks (Madry et al.) in the L2 and L-inf threat models, on images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad.errors import ConfigError

NORMS = ("l2", "linf")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * torch.clamp(eps / _per_sample_norm(delta), max=1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "l2",
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """Adversarial examples within the ``norm`` ball of radius ``eps`` around ``x`` that raise ``loss_fn``.

    The model is put in eval mode for the attack and restored after; only the input is differentiated,
    so the model's parameter gradients are left untouched. Pixels stay in [0, 1].
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown threat model '{norm}' (choose from {', '.join(NORMS)})")
    if eps <= 0 or steps <= 0:
        return x.detach()
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    if random_start:
        if norm == "linf":
            delta = torch.empty_like(x).uniform_(-eps, eps)
        else:
            noise = torch.randn_like(x)
            radius = eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
            delta = noise / _per_sample_norm(noise) * radius
        delta = (x + delta).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)
                delta = _project(delta + step_size * step, eps, norm)
                delta = (x + delta).clamp(0, 1) - x
    finally:
        model.train(was_training)
    return (x + delta).detach()
