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


def level_text(noise: str, level: float) -> str:
    """A noise level in its own unit: Gaussian sigma in grey levels of 255, as --sigma takes it; photons per
    pixel at full scale (poisson, sensor); the share of pixels hit (salt and pepper); JPEG quality."""
    if noise == "none":
        return "clean input"
    unit = {"gaussian": ("sigma ", 255, "/255"), "poisson": ("", 1, " photons"), "sensor": ("", 1, " photons")}
    unit |= {"salt_pepper": ("", 100, " % of pixels"), "jpeg": ("quality ", 1, "")}
    prefix, scale, suffix = unit.get(noise, ("", 1, ""))
    return f"{prefix}{level * scale:g}{suffix}"


def apply_noise(x: torch.Tensor, kind: str, level: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` corrupted by ``kind`` at ``level`` (one for all images, or one per image: (N,)); the result stays in
    [0, 1]. The random numbers are drawn on ``generator``'s device (a CPU generator gives the same corruption on
    every device; one on ``x``'s device keeps a training step on the GPU)."""
    per_image = torch.as_tensor(level, dtype=torch.float32).to(x.device).expand(len(x)).reshape(-1, 1, 1, 1)
    draw = {"generator": generator, "device": generator.device}
    if kind == "gaussian":
        noisy = x + per_image * torch.randn(x.shape, **draw).to(x)
    elif kind in ("poisson", "sensor"):
        rate = (x * per_image).to(generator.device)
        noisy = torch.poisson(rate, generator=generator).to(x) / per_image
        if kind == "sensor":
            read = SENSOR_READ_NOISE * torch.randn(x.shape, **draw).to(x)
            noisy = ((noisy + read).clamp(0, 1) * 255).round() / 255
    elif kind == "salt_pepper":
        hit = torch.rand((x.shape[0], 1, *x.shape[2:]), **draw).to(x)
        noisy = torch.where(hit < per_image / 2, 0.0, torch.where(hit > 1 - per_image / 2, 1.0, x))
    elif kind == "jpeg":
        images = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        qualities = per_image.flatten().round().int().tolist()
        decoded = [
            cv2.imdecode(cv2.imencode(".jpg", im[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])[1], 1)[:, :, ::-1]
            for im, q in zip(images, qualities, strict=True)
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
    or (a share ``config.clean_fraction``) none. The choices come from the step's (CPU) generator; the noise itself
    is drawn on the images' device, from a generator seeded by it, one operation per noise kind for the whole
    batch (an image at a time, on the CPU, made the GPU wait on the host)."""
    ranges = _ranges(config)

    def corrupt(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        picks = torch.randint(0, len(config.noises), (len(x),), generator=generator)
        picks[torch.rand(len(x), generator=generator) < config.clean_fraction] = -1  # left clean
        shares = torch.rand(len(x), generator=generator)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        on_device = torch.Generator(device=x.device).manual_seed(seed)
        out = x.clone()
        for k, kind in enumerate(config.noises):
            chosen = (picks == k).nonzero().flatten()
            if len(chosen) == 0:
                continue
            low, high = ranges[kind]
            levels = low + (high - low) * shares[chosen]
            index = chosen.to(x.device)
            out[index] = apply_noise(x[index], kind, levels, on_device)
        return out

    return corrupt
