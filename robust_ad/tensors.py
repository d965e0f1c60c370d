"""numpy ↔ torch conversions, batching and atomic torch checkpoints: the one place for each."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ad.errors import ModelError
from robust_ad.fileio import write_atomic


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) float images in [0, 1] → (N, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) tensor on any device → (N, H, W, 3) float32 numpy images."""
    return x.detach().permute(0, 2, 3, 1).float().cpu().numpy()


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches over ``n`` items, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """torch.save, atomically: an interrupted run never leaves a half-written file."""
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def quiet_load(path: str | Path, **options: Any) -> Any:
    """``torch.load`` onto the CPU without torch's note on a foreign file's pickle protocol: a file that does not
    load is said by the caller, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", **options)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found")
    try:
        payload = quiet_load(path, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path}: corrupt or not a robust-ad checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise ModelError(f"{path}: not a robust-ad checkpoint")
    return payload
