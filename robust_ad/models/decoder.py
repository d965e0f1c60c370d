"""The mirror decoder (derived from the encoder's shape, not written per backbone) and a patch discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad.models.encoder import Encoder


def conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """3x3 convolution, batch norm, LeakyReLU."""
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2)]


def mirror_levels(encoder: Encoder) -> list[tuple[int, int]]:
    """(channels, stride) at each resolution the encoder passes through, deepest first."""
    levels: dict[int, int] = {}
    for channels, stride in encoder.probe().values():
        levels[round(stride)] = channels  # the last stage at a stride sets its channels
    return sorted(levels.items(), key=lambda item: -item[0])


class MirrorDecoder(nn.Module):
    """Walks the encoder's resolutions backwards: per level, upsample + two (conv, batch norm, LeakyReLU);
    a final convolution and sigmoid give an RGB image in [0, 1] at the input's size."""

    def __init__(self, encoder: Encoder, width: float = 1.0) -> None:
        super().__init__()
        levels = mirror_levels(encoder)
        layers: list[nn.Module] = []
        in_ch = levels[0][1]
        previous_stride = levels[0][0]
        for stride, channels in [*levels[1:], (1, levels[-1][1])]:
            out_ch = max(8, round(channels * width))
            layers.append(nn.Upsample(scale_factor=previous_stride / stride, mode="bilinear", align_corners=False))
            layers += conv_block(in_ch, out_ch) + conv_block(out_ch, out_ch)
            in_ch, previous_stride = out_ch, stride
        layers.append(nn.Conv2d(in_ch, 3, 3, padding=1))
        self.body = nn.Sequential(*conv_block(levels[0][1], levels[0][1]), *layers)

    def init_output(self, mean_rgb: torch.Tensor) -> None:
        """Start from the training images' mean colour instead of grey (much faster early training)."""
        with torch.no_grad():
            self.body[-1].bias.copy_(torch.logit(mean_rgb.clamp(0.02, 0.98)))

    def forward(self, features: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        # Always resized to the input (an identity when the strides divide it), so that a traced ONNX graph
        # also handles sizes the strides do not divide.
        out = F.interpolate(self.body(features), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(out)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a logit per overlapping patch, real (normal image) vs reconstructed.

    Every convolution is spectrally normalised (no batch norm): a 1-Lipschitz critic cannot win outright, which
    kept its loss near zero and the decoder's GAN loss above its pixel loss before.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(3, width, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, width * 2, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 2, width * 4, 4, 1, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 4, 1, 4, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)
