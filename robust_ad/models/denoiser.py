"""The skip-connected robust denoiser: the robust encoder's features at every resolution, plus a Haar wavelet
skip of the input, decoded into a correction of the input's wavelet coefficients.

A plain mirror decoder can only give back what passes the encoder's bottleneck, so it repaints every image
at the same blurry quality whatever the noise (benchmarks/RESULTS.md). Here, as in the paper's denoiser, detail
goes around the bottleneck:

- the input is split by an orthonormal Haar transform into its low-pass image (LL) and three detail bands (LH,
  HL, HH) at half resolution: the wavelet-pooling skip;
- the decoder walks up from the deepest robust features, taking the robust encoder's feature map at each
  stride (U-Net style), and at half resolution the input's four Haar bands and a noise-level map;
- it predicts a correction of the 4 x 3 Haar coefficients; the inverse Haar transform of (input coefficients +
  correction) is the output. Residual learning: an untrained decoder returns its input exactly, and the
  inverse transform is exact, so nothing is lost at any size (fully convolutional, no tiles, no seams).

The skips never bypass the robust encoder's judgement of what is structure: the only paths from the noisy
pixels to the output are the robust features and the wavelet bands, whose correction the robust features
steer. The eps = 0 twin, trained identically, shows what robustness adds.

The noise level is estimated from the input (the median absolute HH coefficient / 0.6745, Donoho's estimator, of
the colour-opponent channels, where texture is weak) or given (``sigma``, on [0, 1] pixels); below ``min_sigma``
the input is returned unchanged.

Not worse than the input (``guard``, on by default): a network that fits its training noise well may still
repaint clean structure it cannot tell from noise. Stein's unbiased risk estimate (SURE) estimates, without the
clean image, the mean squared error of every blend ``x + a (f(x) - x)`` of input and output under additive
Gaussian noise, of the given level or, blind, of each 16 px block's own level (shot noise is stronger in bright
parts); its minimum over a in [0, 1] is in closed form, and a = 0 (the input) is always
a candidate, so the chosen blend's estimated error is never above the input's. The divergence SURE needs is
estimated with one more forward pass on a probed input (Monte-Carlo SURE, Ramani et al. 2008). Isolated
saturated pixels (impulse noise: dead and hot pixels, which SURE's Gaussian model does not describe) take the
output in full.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad.errors import ConfigError
from robust_ad.models.autoencoder import Reconstructor
from robust_ad.models.decoder import conv_block
from robust_ad.models.encoder import Encoder

# Orthonormal 2x2 Haar analysis filters: LL, LH, HL, HH.
_HAAR = (
    torch.tensor([[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]], dtype=torch.float32)
    / 2
)
MULTIPLE = 8  # inputs are reflect-padded to a multiple of the deepest stride
SIGMA_SCALE = 10.0  # the noise-level map enters the decoder as 10 sigma: about the range of its other inputs
# The guard's random +-1 probe: a fixed tile repeated over larger images, wider than the network's receptive
# field (so that no pixel's output depends on two samples that share a probe value).
PROBE_SIZE = 256
# The probe's amplitude: a hundredth of sigma, but at least half a grey level, which fp16 and TF32 convolutions
# (about 11 significant bits) still resolve.
PROBE_STEP, MIN_PROBE_STEP = 0.01, 2e-3
IMPULSE_SIGMAS = 4.0  # a saturated pixel this many sigma away from its 3x3 median is an impulse
# Frames with a side over TILE px run through the network in tiles (multiples of the deepest stride, so that the
# tiles keep the frame's grid), each with context around it: TILE_MARGIN px, plus 4 px per residual block of the
# trunk (two 3x3 convolutions at stride 2). With 96 px the tiled correction of a 900x1000 frame equals the whole
# frame's (64 px: 4e-5 grey levels off at most; 32 px: 0.1; tests/test_denoise.py checks it).
TILE, TILE_MARGIN = 1024, 96
VARIANCE_BLOCK = 16  # px: the blind guard reads the noise variance per square of this side (128 samples each)


def haar(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with even H, W -> (N, 4C, H/2, W/2): per channel LL, LH, HL, HH."""
    n, c, h, w = x.shape
    kernels = _HAAR.to(x).unsqueeze(1)  # (4, 1, 2, 2)
    return F.conv2d(x.reshape(n * c, 1, h, w), kernels, stride=2).reshape(n, c * 4, h // 2, w // 2)


def inverse_haar(bands: torch.Tensor) -> torch.Tensor:
    """The exact inverse of :func:`haar` (the transform is orthonormal: its transpose)."""
    n, c4, h, w = bands.shape
    kernels = _HAAR.to(bands).unsqueeze(1)
    return F.conv_transpose2d(bands.reshape(n * c4 // 4, 4, h, w), kernels, stride=2).reshape(n, c4 // 4, h * 2, w * 2)


def estimate_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per image, the standard deviation of additive white noise, independent in each channel: median |HH| / 0.6745
    of the finest Haar level (Donoho & Johnstone), read from :func:`_noise_channels`; (N,) on [0, 1] pixels."""
    return _median_hh(_noise_channels(x))


def _block_variance(channels: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): the noise variance of each pixel, Donoho's estimate per ``VARIANCE_BLOCK`` square of the
    channels noise is read from (:func:`_noise_channels`). Signal-dependent noise (shot noise: brighter is noisier)
    is stronger in some places than the image-wide level says, and the guard weighs each pixel by its own."""
    h, w = channels.shape[-2:]
    rows, cols = _padded_index(h, channels.device, VARIANCE_BLOCK), _padded_index(w, channels.device, VARIANCE_BLOCK)
    detail = haar(channels.index_select(2, rows).index_select(3, cols))[:, 3::4].abs()  # each channel's HH band
    blocks = F.pixel_unshuffle(detail, VARIANCE_BLOCK // 2)  # (N, C * samples per block, blocks down, across)
    middle = (blocks.shape[1] - 1) // 2
    median = blocks.sort(dim=1).values[:, middle : middle + 1]
    variance = F.interpolate((median / 0.6745).square(), scale_factor=VARIANCE_BLOCK, mode="nearest")
    return variance.index_select(2, rows[: torch.as_tensor(h)]).index_select(3, cols[: torch.as_tensor(w)])


def _noise_channels(x: torch.Tensor) -> torch.Tensor:
    """Where noise is read. In colour images, the two colour-opponent channels (R - G and R + G - 2B,
    orthonormal): noise of level sigma in each channel has level sigma there too, but texture, mostly a matter of
    brightness, is far weaker, so a textured image is not taken for a noisy one. Noise that is the same in every
    channel is underestimated, which leaves more of the input as it is. Grey images (no opponent signal) are read
    from two of their (identical) channels."""
    if x.shape[1] != 3:
        return x
    red, green, blue = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    opponent = torch.cat([(red - green) / 2**0.5, (red + green - 2 * blue) / 6**0.5], 1)
    colour = (_median_hh(opponent) > 0).view(-1, 1, 1, 1)
    return torch.where(colour, opponent, x[:, :2])


def _median_hh(x: torch.Tensor) -> torch.Tensor:
    """Donoho's estimate over all of ``x``'s channels: median |HH| / 0.6745, (N,)."""
    n, c = x.shape[:2]
    even = x.index_select(2, _even_index(x.shape[-2], x.device)).index_select(3, _even_index(x.shape[-1], x.device))
    hh = haar(even).reshape(n, c, 4, -1)[:, :, 3].abs().flatten(1)
    median = hh.sort(dim=1).values[:, (hh.shape[1] - 1) // 2]  # torch.median, as ONNX can express it
    return median / 0.6745


def _even_index(n: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The first even number of a side's pixels, at least 2 (a side of 1 px repeated: no detail, no noise read)."""
    n = torch.as_tensor(n, device=device)
    return torch.arange(torch.clamp(n // 2 * 2, min=2), device=device).clamp(max=n - 1)


def _padded_index(n: int | torch.Tensor, device: torch.device, multiple: int = MULTIPLE) -> torch.Tensor:
    """Indices that extend a side of ``n`` pixels to a multiple of ``multiple`` by mirroring its end (reflect;
    clamped for tiny sides). Built with tensor ops, so an exported graph pads every input size correctly."""
    n = torch.as_tensor(n, device=device)
    index = torch.arange((n + multiple - 1) // multiple * multiple, device=device)
    return torch.where(index < n, index, 2 * (n - 1) - index).clamp(0, n - 1)


def _skip_stages(encoder: Encoder) -> dict[int, str]:
    """The last encoder stage at each stride (2, 4, 8, ...): the feature maps the decoder takes as skips."""
    stages: dict[int, str] = {}
    for name, (_, stride) in encoder.probe().items():
        stages[round(stride)] = name
    return dict(sorted(stages.items()))


class ResidualBlock(nn.Module):
    """x + (3x3 convolution, batch norm, LeakyReLU, 3x3 convolution, batch norm)(x); starts as the identity (the
    last batch norm's scale zero), so added blocks never make the starting network worse."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_block(channels, channels), *conv_block(channels, channels)[:2])
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class HaarSkipDecoder(nn.Module):
    """From the deepest robust features up to half resolution, taking a skip at each stride, then ``depth``
    residual blocks there and a correction of the input's Haar coefficients."""

    def __init__(self, encoder: Encoder, width: float = 1.0, depth: int = 0) -> None:
        super().__init__()
        probe = encoder.probe()
        self.skips = _skip_stages(encoder)
        strides = sorted(self.skips, reverse=True)  # deepest first, ending at 2
        if strides[-1] != 2:
            raise ConfigError(
                f"the skip denoiser needs a backbone whose stages start at stride 2 (the ResNets); {encoder.backbone} "
                "starts at stride 1: use denoise.architecture: mirror with it"
            )
        channels = {stride: probe[name][0] for stride, name in self.skips.items()}
        width_of = {stride: max(16, round(channels[stride] * width)) for stride in strides}
        self.bottom = nn.Sequential(*conv_block(channels[strides[0]], width_of[strides[0]]))
        self.ups = nn.ModuleList()
        for deeper, stride in itertools.pairwise(strides):
            extra = 12 + 1 if stride == 2 else 0  # the input's Haar bands and the noise-level map
            in_ch = width_of[deeper] + channels[stride] + extra
            self.ups.append(
                nn.Sequential(*conv_block(in_ch, width_of[stride]), *conv_block(width_of[stride], width_of[stride]))
            )
        # The input's Haar bands enter normalised: raw, their noise (a few hundredths) was drowned by the robust
        # features beside them, and training sat for hundreds of steps at the identity before it found the noise.
        self.band_norm = nn.BatchNorm2d(12)
        self.trunk = nn.Sequential(*[ResidualBlock(width_of[2]) for _ in range(depth)])
        self.head = nn.Conv2d(width_of[2], 12, 3, padding=1)
        self.strides = strides

    def init_output(self, mean_rgb: torch.Tensor | None = None) -> None:
        """Start as the identity: a zero correction (the decoder's first output is its input)."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(
        self, features: OrderedDict[str, torch.Tensor], bands: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        h = self.bottom(features[self.skips[self.strides[0]]])
        for stride, up in zip(self.strides[1:], self.ups, strict=True):
            skip = features[self.skips[stride]]
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            parts = [h, skip]
            if stride == 2:
                level = sigma.view(-1, 1, 1, 1).expand(-1, 1, *skip.shape[-2:])
                normalised = self.band_norm(bands)
                parts += [F.interpolate(normalised, size=skip.shape[-2:], mode="nearest"), level * SIGMA_SCALE]
            h = up(torch.cat(parts, 1))
        correction = self.head(self.trunk(h))
        return F.interpolate(correction, size=bands.shape[-2:], mode="nearest")


class SkipDenoiser(Reconstructor):
    """x -> inverse Haar(Haar(x) + decoder(robust features of x, Haar(x), noise level)); fully convolutional."""

    def __init__(
        self,
        backbone: str = "resnet18",
        layer: str = "layer2",
        feature_layers: tuple[str, ...] | list[str] = ("layer1", "layer2"),
        width: float = 1.0,
        decoder_width: float = 1.0,
        min_sigma: float = 1 / 255,
        guard: bool = True,
        depth: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(backbone, layer, feature_layers, width)
        self.decoder = HaarSkipDecoder(self.encoder, decoder_width, depth)
        self.min_sigma = min_sigma
        self.guard = guard
        signs = torch.randint(0, 2, (3, PROBE_SIZE, PROBE_SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.register_buffer("probe", signs.float(), persistent=False)  # not in checkpoints: rebuilt identically

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        blind = sigma is None
        if blind:
            channels = _noise_channels(x)
            sigma = _median_hh(channels)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        correction = self.correction(x, sigma)
        hits = impulses(x, sigma.float().clamp_min(self.min_sigma).view(-1, 1, 1, 1))
        if self.guard and not self.training:  # training fits the network itself
            variance = _block_variance(channels.float()) if blind else sigma.float().square().view(-1, 1, 1, 1)
            restored = self._blend(x, sigma, correction, variance, hits)
        else:
            restored = (x + correction).clamp(0, 1)
        keep = sigma < self.min_sigma  # no measurable (or, given, no) noise: the input as it is
        if blind:  # unless it has impulses: dead or hot pixels leave the estimated level low
            keep = keep & ~hits.flatten(1).any(1)
        return torch.where(keep.view(-1, 1, 1, 1), x, restored)

    def restore(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x`` at noise level ``sigma`` (N,), without the guard."""
        return (x + self.correction(x, sigma)).clamp(0, 1)

    def correction(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the network adds to ``x``: the inverse Haar transform of its correction of the Haar coefficients
        (the transform is linear and exact, so the input's own coefficients need no round trip). Frames with a side
        over ``TILE`` go through the network in tiles of that side, each with a margin of context on every side that
        is cropped away, on the whole frame's grid of strides: no seams, and memory bounded by the tile instead of
        growing with the frame (about 0.8 GB per megapixel in float32 on the CPU)."""
        h, w = x.shape[-2:]
        if max(h, w) <= TILE or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._correction(x, sigma)
        margin = TILE_MARGIN + 4 * len(self.decoder.trunk)
        margin += -margin % MULTIPLE
        out = torch.empty_like(x)
        for top in range(0, h, TILE):
            for left in range(0, w, TILE):
                y0, x0 = max(0, top - margin), max(0, left - margin)
                y1, x1 = min(h, top + TILE + margin), min(w, left + TILE + margin)
                piece = self._correction(x[..., y0:y1, x0:x1], sigma)
                rows, cols = min(TILE, h - top), min(TILE, w - left)
                out[..., top : top + rows, left : left + cols] = piece[
                    ..., top - y0 : top - y0 + rows, left - x0 : left - x0 + cols
                ]
        return out

    def _correction(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows, cols = _padded_index(h, x.device), _padded_index(w, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)
        bands = haar(padded)
        correction = inverse_haar(self.decoder(self.encoder.features(padded), bands, sigma))
        return correction.index_select(2, rows[: torch.as_tensor(h)]).index_select(3, cols[: torch.as_tensor(w)])

    def _blend(
        self, x: torch.Tensor, sigma: torch.Tensor, correction: torch.Tensor, variance: torch.Tensor, hits: torch.Tensor
    ) -> torch.Tensor:
        """``x + a (f(x) - x)`` per image, f(x) = clip(x + correction), with the ``a`` in [0, 1] that minimises
        SURE; impulses (``hits``) take f(x) in full. ``variance``: each pixel's noise variance s_i^2 (a map, or one
        level).

        SURE(a) = a^2 |d|^2 - sum s_i^2 + 2 sum s_i^2 (1 + a (df_i/dx_i - 1)) over the samples that are not
        impulses, with d = f(x) - x; its minimum is at a = sum s_i^2 (1 - df_i/dx_i) / |d|^2. Arithmetic in
        float32 at any precision."""
        level = sigma.float().view(-1, 1, 1, 1)
        keep = (~hits).float()
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device) % PROBE_SIZE
        cols = torch.arange(w, device=x.device) % PROBE_SIZE
        probe = self.probe.float().index_select(1, rows).index_select(2, cols) * keep
        step = (level * PROBE_STEP).clamp_min(MIN_PROBE_STEP)
        base = x.float() + correction.float()
        moved = self.correction((x.float() + step * probe).to(x.dtype), sigma).float() - correction.float()
        inside = ((base > 0) & (base < 1)).float()  # where the output is not clipped, df/dx = 1 + dc/dx
        slope = inside * (1 + probe * moved / step)  # df_i/dx_i, one probe's unbiased estimate
        change = base.clamp(0, 1) - x.float()
        energy = (change * keep).flatten(1).square().sum(1).clamp_min(1e-12)
        share = ((keep * variance * (1 - slope)).flatten(1).sum(1) / energy).clamp(0, 1)
        blend = keep * share.view(-1, 1, 1, 1) + 1 - keep
        return (x.float() + blend * change).to(x.dtype)


def impulses(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Isolated saturated samples: 0 or 1, and more than ``IMPULSE_SIGMAS`` sigma from their 3x3 median (a clipped
    highlight or shadow is not isolated). ``sigma``: (N, 1, 1, 1)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    median = median9([padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)])
    return ((x <= 0) | (x >= 1)) & ((x - median).abs() > IMPULSE_SIGMAS * sigma)


# Devillard's 19 compare-exchanges that bring the median of 9 values to the middle ("Fast median search", 1998).
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3))
_MEDIAN9 += ((5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median9(values: list[torch.Tensor]) -> torch.Tensor:
    """The elementwise median of nine tensors, by a sorting network of minima and maxima: element-wise operations
    that every engine fuses or runs at memory speed (a sort along a stacked axis was a seventh of a denoiser's
    training step on the CPU)."""
    v = list(values)
    for i, j in _MEDIAN9:
        v[i], v[j] = torch.minimum(v[i], v[j]), torch.maximum(v[i], v[j])
    return v[4]
