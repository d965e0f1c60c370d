"""Atomic torch checkpoints, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robust_ad.errors import ModelError
from robust_ad.fileio import write_atomic


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path}: corrupt or not a robust-ad checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise ModelError(f"{path}: not a robust-ad checkpoint")
    return payload
