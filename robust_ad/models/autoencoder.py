"""The robust autoencoder: a (frozen) robust encoder and the mirror decoder that inverts it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from robust_ad.models.decoder import MirrorDecoder
from robust_ad.models.encoder import Encoder
from robust_ad.tensors import to_images, to_tensor


class RobustAutoencoder(nn.Module):
    """x ↦ D(E(x)), fully convolutional: a model trained at one size runs at another."""

    def __init__(
        self,
        backbone: str = "resnet18",
        layer: str = "layer2",
        feature_layers: Sequence[str] = ("layer1", "layer2"),
        width: float = 1.0,
        decoder_width: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(backbone, layer, feature_layers, width)
        self.decoder = MirrorDecoder(self.encoder, decoder_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), x.shape[-2:])

    def features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.encoder.features(x)

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Reconstructions of (N, H, W, 3) float images in [0, 1], same shape."""
        self.eval()
        device = next(self.parameters()).device
        starts = range(0, len(images), batch_size)
        return np.concatenate([to_images(self(to_tensor(images[i : i + batch_size]).to(device))) for i in starts])
