"""The detector: a robust autoencoder plus the statistics that turn residuals into calibrated anomaly maps.

Components (each a per-pixel map at the input's size, smoothed):

- ``pixel``: mean absolute residual |x - x̂| over channels;
- ``ssim``: 1 - SSIM(x, x̂), mean over channels (structural residual, kornia.metrics.ssim's map);
- ``feature``: squared robust-feature residual ||E_l(x) - E_l(x̂)||² / C, upsampled, mean over layers;
- ``memory``: squared distance of E_l(x) to the normal training features at that location, per channel
  scaled by their variance (a per-location diagonal Gaussian), upsampled, mean over layers.
- ``nearest``: squared distance of each feature vector to the nearest normal one at any location (a coreset of
  the training images' vectors, as PatchCore), per channel, upsampled. The vectors are those of
  ``scoring.nearest_layers`` (default the finest feature layer) joined at the finest one's resolution, each
  averaged over its ``nearest_pool`` neighbourhood (:meth:`AnomalyScorer.nearest_features`). Unlike ``memory`` it
  needs no alignment: a texture or part that has moved still finds its match. A patch whose texture has been
  smoothed away finds one too (the example textures' 'missing' defect: image AUROC 0.62 on fabric and 0.52 on
  gravel by this component alone, five-seed means); ``energy`` is the one that sees it.
- ``energy``: how far the local energy of the residual's finest detail departs, either way, from its normal level
  at that location: (log e - mean)² / variance, e the mean square over ``ENERGY_WINDOW`` px of the residual's grey
  level less its 3 x 3 mean (:func:`local_energy`). A normal texture leaves a residual of a steady fineness that
  the decoder cannot repaint; where the texture is missing (smoothed, worn, glazed over) the residual goes quiet,
  which every other component, one-sided and coarser, scores as typical (benchmarks/FINDINGS.md, "Missing
  texture").
- ``colour``: how far the local mean colour departs from its normal value at that location: the image's mean
  colour over cells of 1/``COLOUR_GRID`` of the training size, less the whole image's mean colour (an image's
  overall tint and lighting, which vary between normal parts, cancel), scored as ``memory`` scores features (per
  location and channel, scaled by the variance; :func:`local_colour`). It looks at the image alone, not at the
  networks: a stain or discoloured patch keeps its texture, which a robust encoder pretrained on photographs
  describes, and its decoder repaints, colour included (benchmarks/FINDINGS.md, "Colour defects").

With ``scoring.upsample`` k > 1 the networks see each image enlarged k times (bilinear) and every map is brought
back to the image's size: a finer grid of feature vectors for small images (the feature statistics and the bank are
of the enlarged training images).

The reconstruction is the decoder's output with its colour response corrected (:func:`correct_colour`): each
reconstruction's mean colour m (RGB) becomes ``colour_matrix`` @ m - ``colour_offset``, the affine map that best
takes the reconstructions' mean colours to their images' over the normal training images (fitted in calibration).
The offset is the decoder's cast; the matrix is its response to an image's overall colour, which a decoder can
exaggerate or mix between channels (fabric, seed 1: reconstructions' mean colours spread 1.4 times as wide as
their images'). It is a fixed function of the reconstruction alone, the same for every image, so it cannot hide
a defect that changes one part's colour; left in, the error would be a residual on every normal pixel.

Each component is standardised by its mean and standard deviation over held-out normal pixels, then
the maps are fused with the recipe weights: the heat map. The image score (``scoring.score_fusion``):

- ``components`` (default): each component's own image score (the max, or top-k mean, of its map), standardised
  by its mean and standard deviation over the held-out normal images, the largest (times its weight) taken. A
  component whose maxima spread widely over normal images (SSIM on a texture) then cannot drown the one that
  sees the defect, which the fused map lets it do (``benchmarks/rescore.py``; benchmarks/FINDINGS.md, "The image
  score").
- ``map``: the max (or top-k mean) of the fused map.

Either is then standardised by the scores of held-out normal images: the *normalised score*.

With ``map``, scoring (``forward``) computes the fused map in fewer operations than calibration, which needs each
smoothed component (``component_maps``): standardising and weighting are affine, resampling and smoothing linear
and constant-preserving, so the terms are weighted and summed at each resolution first, then resampled and
smoothed once per resolution (one channel instead of one per component; the same map up to rounding).

Resampling a map to the image's size and smoothing it there are both linear and separable, so they are done
together, as one matrix product per axis (:func:`resampling_matrix`).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d
from torch import nn

from robust_ad.config import COMPONENTS, ScoringConfig
from robust_ad.models.autoencoder import RobustAutoencoder


def _resize(t: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    if t.shape[-2:] == size:
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


# nearest: query-to-bank distances computed at once, at most (AnomalyScorer._nearest_distance). Each block is written
# to memory and read back to take its minimum: 8 MB blocks (2^21 floats) stay in a server CPU's cache where 128 MB
# ones did not (256 px, onnxruntime, 2-core Xeon: 29.3 ms a frame against 34.4 with 2^25; benchmarks/FINDINGS.md,
# "New score component")
NEAREST_BLOCK = 2**21
SSIM_CHANNELS = 16  # x, y, x² + y², xy of RGB images and zero channels, filtered together (AnomalyScorer._ssim)
ENERGY_WINDOW = 5  # px (odd): the square over which local_energy averages the residual's squared detail
# added before the logarithm: about eight times the energy of 8-bit rounding ((1/255)² / 12), so that flat and
# saturated parts read as a steady floor, not as the logarithm of their rounding
ENERGY_FLOOR = 1e-5
COLOUR_GRID = 16  # the colour component's cells: 1/16 of the training size (4 px at 64, 16 px at 256)


def local_energy(residual: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): log of the mean square, over ``ENERGY_WINDOW`` px, of the residual's grey level less its 3 x 3
    mean (borders reflected). A constant per image (a colour cast and its correction) does not change it."""
    grey = residual.mean(1, keepdim=True)
    detail = grey - F.avg_pool2d(F.pad(grey, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    r = ENERGY_WINDOW // 2
    energy = F.avg_pool2d(F.pad(detail.square(), (r, r, r, r), mode="reflect"), ENERGY_WINDOW, stride=1)
    return torch.log(energy + ENERGY_FLOOR)


def local_colour(x: torch.Tensor, cell: int) -> torch.Tensor:
    """(N, 3, H // cell, W // cell): each ``cell`` x ``cell`` square's mean colour less the image's mean colour."""
    return F.avg_pool2d(x, cell) - x.mean((2, 3), keepdim=True)


def correct_colour(x_hat: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Reconstructions (N, 3, H, W) with each one's mean colour m (RGB) moved to ``matrix`` @ m - ``offset``,
    clamped to [0, 1]: the decoder's colour response corrected (the identity matrix: its cast removed)."""
    mean = x_hat.mean((2, 3))
    shift = mean @ matrix.T - offset - mean  # the new mean less the old
    return (x_hat + shift[:, :, None, None]).clamp(0, 1)


@functools.lru_cache(maxsize=32)
def smoothing_matrix(n: int, sigma: float, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix A such that ``x @ A`` filters the rows of x with a Gaussian of ``sigma``, ``radius`` taps each
    side, borders reflected: row i is the filtered unit vector e_i. A matrix product is far faster than the wide
    depthwise convolution it replaces on every engine (onnxruntime's CPU convolution pads a 1-channel map to 16
    channels); built once per size and device (no host-to-GPU copy in a forward pass, which CUDA graphs cannot
    capture), it is a constant of an exported graph."""
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma)[:, 0]
    padded = np.pad(np.eye(n), ((0, 0), (radius, radius)), mode="reflect")
    matrix = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=1) @ kernel
    return torch.from_numpy(matrix).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def resampling_matrix(
    n: int, size: int, sigma: float, radius: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(n, size) matrix A such that ``x @ A`` resamples the rows of x to ``size`` (bilinear, as :func:`_resize`),
    then filters them as :func:`smoothing_matrix` does (``sigma`` 0: not at all). Both are linear, so one product
    per axis does what an upsampling of a coarse map to full size and a smoothing there did, in fewer operations
    and with no full-size intermediate (benchmarks/FINDINGS.md, "The inference speed section, in detail")."""
    unit = torch.eye(n, dtype=torch.float64)[:, None]  # n one-pixel rows
    resampled = F.interpolate(unit, size=size, mode="linear", align_corners=False)[:, 0]
    if sigma > 0:
        resampled = resampled @ smoothing_matrix(size, sigma, radius, resampled.device, resampled.dtype)
    return resampled.to(device=device, dtype=dtype)


class AnomalyScorer(nn.Module):
    """Images (N, 3, H, W) in [0, 1] → fused anomaly map (N, H, W), normalised score (N,), reconstruction."""

    def __init__(self, model: RobustAutoencoder, config: ScoringConfig, train_size: int) -> None:
        super().__init__()
        self.components = [c for c in COMPONENTS if config.weights.get(c, 0) > 0]
        self.model, self.config, self.train_size = model, config, train_size
        self.layers = list(model.encoder.feature_layers)
        # the layers whose vectors the nearest component compares, finest first (default: the finest alone)
        self.nearest_layers = [k for k in self.layers if k in config.nearest_layers] or self.layers[:1]
        weights = torch.tensor([float(config.weights[c]) for c in self.components])
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("map_mean", torch.zeros(len(self.components)))
        self.register_buffer("map_std", torch.ones(len(self.components)))
        # each component's image score over the held-out normal images (score_fusion "components")
        self.register_buffer("component_score_mean", torch.zeros(len(self.components)))
        self.register_buffer("component_score_std", torch.ones(len(self.components)))
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))
        self.register_buffer("colour_offset", torch.zeros(3))  # the decoder's colour cast (calibration.json)
        self.register_buffer("colour_matrix", torch.eye(3))  # its response to an image's mean colour (calibration.json)
        # SSIM's Gaussian window (sigma 1.5, as kornia.metrics.ssim) as the depthwise kernel along rows of the
        # SSIM_CHANNELS filtered in one go (_ssim), built once: not saved, not loaded
        window = get_gaussian_kernel1d(config.ssim_window, 1.5).view(1, 1, 1, -1).repeat(SSIM_CHANNELS, 1, 1, 1)
        self.register_buffer("ssim_window", window, persistent=False)
        shapes = self._statistic_shapes((train_size, train_size))  # of the enlarged images (upsample)
        for name, shape in shapes.items():
            self.register_buffer(f"memory_mean_{name}", torch.zeros(shape))
            self.register_buffer(f"memory_var_{name}", torch.ones(shape))
        if "nearest" in self.components:  # (vectors, channels); its length is set by calibration
            self._set_bank(torch.zeros(0, sum(shapes[k][0] for k in self.nearest_layers)))

    def _feature_shapes(self, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The feature shapes of images of ``size`` (before :meth:`enlarge`)."""
        with torch.no_grad():
            device = next(self.model.parameters()).device
            feats = self.model.eval().features(self.enlarge(torch.zeros(1, 3, *size, device=device)))
        return {layer: tuple(feats[layer].shape[1:]) for layer in self.layers}

    def _statistic_shapes(self, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The shapes of the per-location statistics for images of ``size``: each feature layer's and, where they are
        used, the ``energy`` component's (one channel at the enlarged images' size) and the ``colour`` component's
        (three channels, one value a cell)."""
        shapes = self._feature_shapes(size)
        height, width = size[0] * self.config.upsample, size[1] * self.config.upsample
        if "energy" in self.components:
            shapes["energy"] = (1, height, width)
        if "colour" in self.components:
            shapes["colour"] = (3, height // self.colour_cell, width // self.colour_cell)
        return shapes

    @property
    def colour_cell(self) -> int:
        """The ``colour`` component's cell side in pixels of the (enlarged) images: the same at every input size, as
        the features' cells are."""
        return max(1, self.train_size * self.config.upsample // COLOUR_GRID)

    def enlarge(self, x: torch.Tensor) -> torch.Tensor:
        """The images as the networks see them: enlarged ``upsample`` times (bilinear), or as they are."""
        factor = self.config.upsample
        if factor == 1:
            return x
        size = (int(x.shape[-2]) * factor, int(x.shape[-1]) * factor)  # ints: fixed sizes in exported graphs
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def resample_memory(self, size: tuple[int, int]) -> None:
        """Resample the memory statistics to the feature maps of ``size`` inputs once, as every call would (a
        scorer that only sees one input size: an exported graph). The stored statistics stay as they are (what
        model.pt keeps, what other sizes resample from): the resampled ones are extra, unsaved buffers."""
        for layer, shape in self._statistic_shapes(size).items():
            for name, statistic in zip(("mean", "var"), self._memory_at(layer, shape[-2:]), strict=True):
                self.register_buffer(f"resampled_{name}_{layer}", statistic.clone(), persistent=False)

    def _memory_at(self, layer: str, shape: tuple[int, ...] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``layer``'s normal features (or of ``energy``) at size ``shape``: the stored
        statistics, those resampled once by :meth:`resample_memory`, or the stored ones resampled now."""
        for prefix in ("memory", "resampled"):
            mean = getattr(self, f"{prefix}_mean_{layer}", None)
            if mean is not None and mean.shape[-2:] == shape:
                return mean, getattr(self, f"{prefix}_var_{layer}")
        mean, var = getattr(self, f"memory_mean_{layer}"), getattr(self, f"memory_var_{layer}")
        return _resize(mean[None], shape)[0], _resize(var[None], shape)[0]

    def _resample_smooth(self, maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Maps (N, C, h, w) resampled to ``size`` (bilinear) and smoothed there (a Gaussian of sigma
        ``smoothing_sigma`` at the training size, reflected borders) as one matrix product per axis
        (:func:`resampling_matrix`)."""
        (h, w), (height, width) = (int(n) for n in maps.shape[-2:]), (int(n) for n in size)  # fixed sizes in graphs
        sigma = max(0.0, self.config.smoothing_sigma * width / self.train_size)
        if sigma == 0 and (h, w) == (height, width):
            return maps
        radius = min(math.ceil(3 * sigma), (min(height, width) - 1) // 2)
        rows, cols = (
            resampling_matrix(n, m, sigma, radius, maps.device, maps.dtype) for n, m in ((h, height), (w, width))
        )
        return rows.T @ (maps @ cols)

    def _terms(self, x: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
        """Per active component, its raw maps (N, 1, h, w): one at the (enlarged) input's size (pixel, ssim, energy),
        one of colour cells (colour) or one per feature layer at that layer's resolution (feature, memory, nearest),
        each component the mean of its maps once resampled to the input's size; and the reconstruction, at the
        input's size."""
        size = x.shape[-2:]
        x = self.enlarge(x)
        feats = self._features(x)
        x_hat = self.reconstruction(feats, x.shape[-2:])
        terms = {}
        for name in self.components:
            if name == "pixel":
                terms[name] = [(x - x_hat).abs().mean(1, keepdim=True)]
            elif name == "ssim":
                terms[name] = [1 - self._ssim(x, x_hat).mean(1, keepdim=True)]
            elif name == "feature":
                feats_hat = self._features(x_hat)
                terms[name] = [(feats[k] - feats_hat[k]).square().mean(1, keepdim=True) for k in self.layers]
            elif name == "nearest":
                terms[name] = [self._nearest_distance(self.nearest_features(feats))]
            elif name == "energy":
                terms[name] = [self._memory_distance(local_energy(x - x_hat), "energy")]
            elif name == "colour":
                terms[name] = [self._memory_distance(local_colour(x, self.colour_cell), "colour")]
            else:
                terms[name] = [self._memory_distance(feats[k], k) for k in self.layers]
        return terms, _resize(x_hat, size)

    def component_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unstandardised) smoothed maps (N, K, H, W) of the active components, and the reconstruction. Each
        component is the mean of its terms resampled and smoothed; the terms of one resolution are resampled and
        smoothed together (fewer, larger kernels: three products per axis for the default components)."""
        size = x.shape[-2:]
        terms, x_hat = self._terms(x)
        flat = [(name, m) for name in self.components for m in terms[name]]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, (_, m) in enumerate(flat):
            by_size.setdefault((int(m.shape[-2]), int(m.shape[-1])), []).append(index)
        smoothed: dict[int, torch.Tensor] = {}
        for indices in by_size.values():
            stacked = flat[indices[0]][1] if len(indices) == 1 else torch.cat([flat[i][1] for i in indices], 1)
            smoothed.update(zip(indices, self._resample_smooth(stacked, size).split(1, 1), strict=True))
        maps = []
        for name in self.components:
            own = [smoothed[i] for i, (owner, _) in enumerate(flat) if owner == name]
            maps.append(own[0] if len(own) == 1 else functools.reduce(torch.add, own) / len(own))
        return torch.cat(maps, 1), x_hat

    def fused_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fuse(component_maps(x)[0])`` (N, H, W) and the reconstruction, with one resampling and smoothing of one
        channel per resolution: fuse(G m) = G(sum_k a_k m_k) - sum_k a_k mean_k, a_k = w_k / std_k."""
        terms, x_hat = self._terms(x)
        scale = self.weights / self.map_std
        by_size: dict[tuple[int, int], torch.Tensor] = {}
        for k, name in enumerate(self.components):
            for m in terms[name]:
                key = (int(m.shape[-2]), int(m.shape[-1]))  # ints: traced sizes are distinct tensors
                weighted = m * (scale[k] / len(terms[name]))
                by_size[key] = by_size[key] + weighted if key in by_size else weighted
        summed = functools.reduce(torch.add, [self._resample_smooth(m, x.shape[-2:]) for m in by_size.values()])
        return summed[:, 0] - (scale * self.map_mean).sum(), x_hat

    def reconstruction(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The decoder's image (float32) from the encoder's features, its colour response corrected."""
        dtype = self.model.decoder.body[-1].weight.dtype
        x_hat = self.model.decoder(feats[self.model.encoder.layer].to(dtype), size).float()
        return correct_colour(x_hat, self.colour_matrix, self.colour_offset)

    def _ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """kornia.metrics.ssim's map ('same' padding, reflected borders) from the window buffer (kornia builds its
        window from a host value in every call: a host-to-GPU copy that a CUDA graph cannot capture).

        The four local means SSIM needs (of x, y, x² + y² and xy: the variances enter only as their sum) come
        from one filtering of 16 channels (those 12 and 4 zero channels): the borders reflected once for both
        axes (the same as per axis: reflection commutes with filtering the other axis), then two depthwise
        convolutions in a row. Fewer, wider operations are faster on every engine, and 16 channels, a multiple
        of onnxruntime's channel block (8 or 16), take its blocked depthwise path with no layout change between
        the two passes (15 channels took a kernel about 3 times slower)."""
        zeros = torch.zeros_like(x[:, :1]).expand(-1, SSIM_CHANNELS - 4 * x.shape[1], -1, -1)
        stack = torch.cat([x, y, x * x + y * y, x * y, zeros], 1)
        radius, window = self.config.ssim_window // 2, self.ssim_window
        padded = F.pad(stack, (radius, radius, radius, radius), mode="reflect")
        means = F.conv2d(F.conv2d(padded, window, groups=SSIM_CHANNELS), window.transpose(2, 3), groups=SSIM_CHANNELS)
        mu_x, mu_y, squares, xy, _ = means.split([x.shape[1]] * 4 + [zeros.shape[1]], 1)
        product, power = mu_x * mu_y, mu_x * mu_x + mu_y * mu_y  # var_x + var_y = squares - power
        c1, c2 = 0.01**2, 0.03**2  # for images in [0, 1]
        numerator = (2 * product + c1) * (2 * (xy - product) + c2)
        return numerator / ((power + c1) * (squares - power + c2) + 1e-12)

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder features as float32, whatever precision the networks run in (fp16 exports): the
        scoring arithmetic below (squared distances, variances) overflows in half precision."""
        dtype = self.model.encoder.mean.dtype
        return {name: feat.float() for name, feat in self.model.features(x.to(dtype)).items()}

    def _memory_distance(self, feat: torch.Tensor, layer: str) -> torch.Tensor:
        mean, var = self._memory_at(layer, feat.shape[-2:])
        return ((feat - mean).square() / var).mean(1, keepdim=True)

    def nearest_features(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, C, h, w): the vectors the nearest component compares, those of ``nearest_layers`` resampled to the
        first's (finest) resolution and joined over channels, each averaged over its ``nearest_pool`` square
        neighbourhood (borders: the mean of the neighbours inside the map)."""
        size = feats[self.nearest_layers[0]].shape[-2:]
        joined = torch.cat([_resize(feats[k], size) for k in self.nearest_layers], 1)
        pool = self.config.nearest_pool
        if pool == 1:
            return joined
        return F.avg_pool2d(joined, pool, stride=1, padding=pool // 2, count_include_pad=False)

    def _set_bank(self, bank: torch.Tensor) -> None:
        """The ``nearest`` bank (K, C), stored, and the (C + 1, K) matrix that gives |b|² - 2 q·b for every bank
        vector b as one product with [q, 1]: one matrix product per query instead of a product, a broadcast
        addition and their traffic through memory (half the time in onnxruntime on this CPU). Not saved: rebuilt
        from the bank."""
        self.register_buffer("memory_bank", bank)
        weights = torch.cat([-2 * bank, bank.square().sum(1, keepdim=True)], 1).T.contiguous()
        self.register_buffer("nearest_weights", weights, persistent=False)

    def _nearest_distance(self, feat: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w): squared distance of each vector q of ``feat`` (N, C, h, w) to its nearest in the bank, over
        C: |q|² + min_b (|b|² - 2 q·b), the bank taken a slice at a time (at most NEAREST_BLOCK distances at once)."""
        n, c, h, w = (int(v) for v in feat.shape)
        queries = feat.flatten(2).transpose(1, 2)  # (N, hw, C)
        augmented = torch.cat([queries, torch.ones_like(queries[..., :1])], 2)
        step = max(256, NEAREST_BLOCK // (n * h * w))
        nearest = [(augmented @ part).amin(2) for part in self.nearest_weights.split(step, 1)]
        closest = functools.reduce(torch.minimum, nearest) + queries.square().sum(2)
        return (closest.clamp_min(0) / c).view(-1, 1, h, w)  # -1: exported graphs keep the batch free

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

    def component_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """Each component's image score (N, K) from ``component_maps``: ``raw_score`` of its map (standardising the
        map first would not change it after :meth:`image_raw` standardises the scores)."""
        n, k = maps.shape[:2]
        return self.raw_score(maps.flatten(0, 1)).view(n, k)

    def image_raw(self, maps: torch.Tensor) -> torch.Tensor:
        """The raw image score (N,) from ``component_maps`` (``scoring.score_fusion``)."""
        if self.config.score_fusion == "map":
            return self.raw_score(self.fuse(maps))
        standardised = (self.component_scores(maps) - self.component_score_mean) / self.component_score_std
        return (standardised * self.weights).amax(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anomaly map, normalised score, raw score, reconstruction)."""
        if self.config.score_fusion == "map":
            fused, x_hat = self.fused_map(x)
            raw = self.raw_score(fused)
        else:
            maps, x_hat = self.component_maps(x)
            fused, raw = self.fuse(maps), self.image_raw(maps)
        return fused, (raw - self.score_mean) / self.score_std, raw, x_hat

    def memory_statistics(self) -> dict[str, torch.Tensor]:
        """The per-location feature statistics of the normal training images (what model.pt keeps)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("memory_")}

    def load_memory(self, statistics: dict[str, torch.Tensor]) -> None:
        """Set the memory statistics (the keys of ``memory_statistics``); any resampled from the earlier ones are
        dropped."""
        names = {k for k in self.state_dict() if k.startswith("memory_")}
        if set(statistics) != names:
            raise KeyError(f"memory statistics {sorted(statistics)} instead of {sorted(names)}")
        for name, value in statistics.items():
            if name == "memory_bank":  # its length is the calibration's
                self._set_bank(value.to(self.memory_bank))
            else:
                getattr(self, name).copy_(value)
        for name in [n for n, _ in self.named_buffers(recurse=False) if n.startswith("resampled_")]:
            delattr(self, name)

    def load_normalisation(self, calibration: dict) -> None:
        """Component and score normalisation from a calibration record (calibration.json)."""
        for key in ("image_score", "score_fusion"):  # the score statistics below are of the calibration's scores
            calibrated, configured = calibration[key], getattr(self.config, key)
            if calibrated != configured:
                raise KeyError(f"calibrated with {key} {calibrated!r}, configured {configured!r}")
        components = calibration["components"]
        if list(components) != self.components:
            raise KeyError(f"calibrated components {list(components)} instead of {self.components}")
        self.map_mean.copy_(torch.tensor([components[c]["mean"] for c in self.components]))
        self.map_std.copy_(torch.tensor([components[c]["std"] for c in self.components]))
        if self.config.score_fusion == "components":
            self.component_score_mean.copy_(torch.tensor([components[c]["score_mean"] for c in self.components]))
            self.component_score_std.copy_(torch.tensor([components[c]["score_std"] for c in self.components]))
        self.score_mean.fill_(calibration["score_mean"])
        self.score_std.fill_(calibration["score_std"])
        self.colour_offset.copy_(torch.tensor(calibration["colour_offset"]))
        self.colour_matrix.copy_(torch.tensor(calibration["colour_matrix"]))
