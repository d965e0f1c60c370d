"""The detector: a robust autoencoder plus the statistics that turn residuals into calibrated anomaly maps.

Components (each a per-pixel map at the input's size, smoothed):

- ``pixel``: mean absolute residual |x - x̂| over channels;
- ``ssim``: 1 - SSIM(x, x̂), mean over channels (structural residual, kornia.metrics.ssim's map);
- ``feature``: squared robust-feature residual ||E_l(x) - E_l(x̂)||² / C, upsampled, mean over layers;
- ``memory``: squared distance of E_l(x) to the normal training features at that location, per channel
  scaled by their variance (a per-location diagonal Gaussian), upsampled, mean over layers.

Each component is standardised by its mean and standard deviation over held-out normal pixels, then
the maps are fused with the recipe weights. The image score is the max (or top-k mean) of the fused
map, standardised by the scores of held-out normal images: the *normalised score*.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import filter2d_separable, gaussian_blur2d, get_gaussian_kernel1d
from torch import nn

from robust_ad.config import COMPONENTS, ScoringConfig
from robust_ad.models.autoencoder import RobustAutoencoder


def _resize(t: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


class AnomalyScorer(nn.Module):
    """Images (N, 3, H, W) in [0, 1] → fused anomaly map (N, H, W), normalised score (N,), reconstruction."""

    def __init__(self, model: RobustAutoencoder, config: ScoringConfig, train_size: int) -> None:
        super().__init__()
        self.components = [c for c in COMPONENTS if config.weights.get(c, 0) > 0]
        self.model, self.config, self.train_size = model, config, train_size
        self.layers = list(model.encoder.feature_layers)
        weights = torch.tensor([float(config.weights[c]) for c in self.components])
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("map_mean", torch.zeros(len(self.components)))
        self.register_buffer("map_std", torch.ones(len(self.components)))
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))
        # SSIM's Gaussian window (sigma 1.5, as kornia.metrics.ssim), built once: not saved, not loaded
        self.register_buffer("ssim_window", get_gaussian_kernel1d(config.ssim_window, 1.5), persistent=False)
        shapes = self._feature_shapes(train_size)
        for layer in self.layers:
            self.register_buffer(f"memory_mean_{layer}", torch.zeros(shapes[layer]))
            self.register_buffer(f"memory_var_{layer}", torch.ones(shapes[layer]))

    def _feature_shapes(self, size: int) -> dict[str, tuple[int, ...]]:
        with torch.no_grad():
            device = next(self.model.parameters()).device
            feats = self.model.eval().features(torch.zeros(1, 3, size, size, device=device))
        return {layer: tuple(feats[layer].shape[1:]) for layer in self.layers}

    def _smooth(self, maps: torch.Tensor) -> torch.Tensor:
        sigma = self.config.smoothing_sigma * maps.shape[-1] / self.train_size
        if sigma <= 0:
            return maps
        kernel = 2 * math.ceil(3 * sigma) + 1
        kernel = min(kernel, 2 * ((min(maps.shape[-2:]) - 1) // 2) + 1)
        return gaussian_blur2d(maps, (kernel, kernel), (sigma, sigma), border_type="reflect")

    def component_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unstandardised) smoothed maps (N, K, H, W) of the active components, and the reconstruction."""
        size = x.shape[-2:]
        feats = self._features(x)
        dtype = self.model.decoder.body[-1].weight.dtype
        x_hat = self.model.decoder(feats[self.model.encoder.layer].to(dtype), size).float()
        maps = []
        for name in self.components:
            if name == "pixel":
                maps.append((x - x_hat).abs().mean(1, keepdim=True))
            elif name == "ssim":
                maps.append(1 - self._ssim(x, x_hat).mean(1, keepdim=True))
            elif name == "feature":
                feats_hat = self._features(x_hat)
                per_layer = [(feats[k] - feats_hat[k]).pow(2).mean(1, keepdim=True) for k in self.layers]
                maps.append(torch.stack([_resize(m, size) for m in per_layer]).mean(0))
            else:
                maps.append(
                    torch.stack([_resize(self._memory_distance(feats[k], k), size) for k in self.layers]).mean(0)
                )
        return self._smooth(torch.cat(maps, 1)), x_hat

    def _ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """kornia.metrics.ssim's map ('same' padding, reflected borders) from the window buffer. kornia builds its
        window from a host value in every call: a host-to-GPU copy that stalls the GPU queue and that a CUDA
        graph cannot capture."""
        window = self.ssim_window

        def mean(t: torch.Tensor) -> torch.Tensor:
            return filter2d_separable(t, window, window)

        mu_x, mu_y = mean(x), mean(y)
        var_x, var_y, cov = mean(x * x) - mu_x**2, mean(y * y) - mu_y**2, mean(x * y) - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2  # for images in [0, 1]
        numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        return numerator / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2) + 1e-12)

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder features as float32, whatever precision the networks run in (fp16 exports): the
        scoring arithmetic below (squared distances, variances) overflows in half precision."""
        dtype = self.model.encoder.mean.dtype
        return {name: feat.float() for name, feat in self.model.features(x.to(dtype)).items()}

    def _memory_distance(self, feat: torch.Tensor, layer: str) -> torch.Tensor:
        mean, var = getattr(self, f"memory_mean_{layer}"), getattr(self, f"memory_var_{layer}")
        if mean.shape[-2:] != feat.shape[-2:]:  # another resolution: the statistics are resampled
            mean, var = _resize(mean[None], feat.shape[-2:])[0], _resize(var[None], feat.shape[-2:])[0]
        return ((feat - mean).pow(2) / var).mean(1, keepdim=True)

    def fuse(self, maps: torch.Tensor) -> torch.Tensor:
        """Standardise each component on normal statistics and take their weighted mean: (N, H, W)."""
        standardised = (maps - self.map_mean.view(1, -1, 1, 1)) / self.map_std.view(1, -1, 1, 1)
        return (standardised * self.weights.view(1, -1, 1, 1)).sum(1)

    def raw_score(self, fused: torch.Tensor) -> torch.Tensor:
        flat = fused.flatten(1)
        if self.config.image_score == "max":
            return flat.amax(1)
        k = max(1, int(flat.shape[1] * self.config.topk_fraction))
        return flat.topk(k, dim=1).values.mean(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anomaly map, normalised score, raw score, reconstruction)."""
        maps, x_hat = self.component_maps(x)
        fused = self.fuse(maps)
        raw = self.raw_score(fused)
        return fused, (raw - self.score_mean) / self.score_std, raw, x_hat

    def memory_statistics(self) -> dict[str, torch.Tensor]:
        """The per-location feature statistics of the normal training images (what model.pt keeps)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("memory_")}

    def load_memory(self, statistics: dict[str, torch.Tensor]) -> None:
        names = {k for k in self.state_dict() if k.startswith("memory_")}
        if set(statistics) != names:
            raise KeyError(f"memory statistics {sorted(statistics)} instead of {sorted(names)}")
        for name, value in statistics.items():
            getattr(self, name).copy_(value)

    def load_normalisation(self, calibration: dict) -> None:
        """Component and score normalisation from a calibration record (calibration.json)."""
        components = calibration["components"]
        if list(components) != self.components:
            raise KeyError(f"calibrated components {list(components)} instead of {self.components}")
        self.map_mean.copy_(torch.tensor([components[c]["mean"] for c in self.components]))
        self.map_std.copy_(torch.tensor([components[c]["std"] for c in self.components]))
        self.score_mean.fill_(calibration["score_mean"])
        self.score_std.fill_(calibration["score_std"])
