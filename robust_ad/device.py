"""Device selection and seeding."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from robust_ad.errors import ConfigError, gpu_index


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if gpu_index(name) is not None and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is available (use --device auto or cpu)")
    return torch.device(name)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the host's available physical memory (unbounded where
    the system does not say: sysconf has no such name on macOS and Windows)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return sys.maxsize


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def full_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions without TF32 on CUDA, for scores that agree with the CPU.

    TF32 (PyTorch's default for cuDNN convolutions) keeps 10 mantissa bits: fine for training, but it moves
    calibrated scores by about 1e-3 of a normal standard deviation. Calibration and scoring run without it.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
