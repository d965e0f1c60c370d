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


class Reconstructor(nn.Module):
    """An image-to-image model over a robust encoder (``self.encoder``): batched reconstruction of arrays."""

    encoder: Encoder

    def features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.encoder.features(x)

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch_size: int = 16, **options: object) -> np.ndarray:
        """Outputs for (N, H, W, 3) float images in [0, 1], same shape; ``options`` go to ``forward``."""
        self.eval()
        device = next(self.parameters()).device
        starts = range(0, len(images), batch_size)
        batches = (to_tensor(images[i : i + batch_size]).to(device) for i in starts)
        return np.concatenate([to_images(self(batch, **options)) for batch in batches])


class RobustAutoencoder(Reconstructor):
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
