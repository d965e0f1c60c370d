"""Corruptions of line images for denoising training and evaluation (images in [0, 1], NCHW tensors).

- ``gaussian``: additive sensor noise, level = sigma;
- ``poisson``: shot noise of low light, level = photons at full white (lower is noisier);
- ``salt_pepper``: dead/hot pixels, level = fraction of pixels hit;
- ``jpeg``: compression artefacts, level = JPEG quality (lower is worse);
- ``sensor``: a camera's mix, level = photons at full white: shot noise, Gaussian read noise of
  ``SENSOR_READ_NOISE`` and 8-bit quantisation.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from robust_ad.config import NOISES, DenoiseConfig
from robust_ad.errors import ConfigError

SENSOR_READ_NOISE = 2 / 255
# Levels at which 'eval --mode denoise' measures, mild to strong.
EVAL_LEVELS = {
    "gaussian": [2 / 255, 15 / 255, 25 / 255, 50 / 255],  # 2/255: near-clean
    "poisson": [100.0, 30.0, 10.0],
    "salt_pepper": [0.01, 0.03, 0.06],
    "jpeg": [50, 25, 10],
    "sensor": [100.0, 30.0, 10.0],
}


def apply_noise(x: torch.Tensor, kind: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` corrupted by ``kind`` at ``level``; the result stays in [0, 1]."""
    if kind == "gaussian":
        noisy = x + level * torch.randn(x.shape, generator=generator).to(x)
    elif kind == "poisson":
        noisy = torch.poisson((x * level).cpu(), generator=generator).to(x) / level
    elif kind == "salt_pepper":
        hit = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=generator).to(x)
        noisy = torch.where(hit < level / 2, 0.0, torch.where(hit > 1 - level / 2, 1.0, x))
    elif kind == "sensor":
        shot = torch.poisson((x * level).cpu(), generator=generator).to(x) / level
        read = SENSOR_READ_NOISE * torch.randn(x.shape, generator=generator).to(x)
        noisy = ((shot + read).clamp(0, 1) * 255).round() / 255
    elif kind == "jpeg":
        images = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        decoded = [
            cv2.imdecode(cv2.imencode(".jpg", im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(level)])[1], 1)[:, :, ::-1]
            for im in images
        ]
        noisy = torch.from_numpy(np.stack(decoded).astype(np.float32) / 255).permute(0, 3, 1, 2).to(x)
    else:
        raise ConfigError(f"unknown noise '{kind}' (choose from {', '.join(NOISES)})")
    return noisy.clamp(0, 1)


def _ranges(config: DenoiseConfig) -> dict[str, list[float]]:
    return {
        "gaussian": config.gaussian_sigma,
        "poisson": config.poisson_peak,
        "salt_pepper": config.salt_pepper_amount,
        "jpeg": config.jpeg_quality,
        "sensor": config.sensor_peak,
    }


def random_corruption(config: DenoiseConfig):
    """A corruption for training: each image gets one noise from ``config.noises`` at a random level in range,
    or (a share ``config.clean_fraction``) none."""
    ranges = _ranges(config)

    def corrupt(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = torch.empty_like(x)
        picks = torch.randint(0, len(config.noises), (len(x),), generator=generator)
        clean = torch.rand(len(x), generator=generator) < config.clean_fraction
        for i, pick in enumerate(picks.tolist()):
            if clean[i]:
                out[i] = x[i]
                continue
            kind = config.noises[pick]
            low, high = ranges[kind]
            level = low + (high - low) * float(torch.rand((), generator=generator))
            out[i : i + 1] = apply_noise(x[i : i + 1], kind, level, generator)
        return out

    return corrupt
