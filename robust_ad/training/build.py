"""Models from a configuration: the one place where config sections become constructor arguments."""

from __future__ import annotations

from robust_ad.config import Config, EncoderConfig
from robust_ad.models.autoencoder import RobustAutoencoder
from robust_ad.models.encoder import Encoder


def build_encoder(config: EncoderConfig) -> Encoder:
    return Encoder(config.backbone, config.layer, config.feature_layers, config.width)


def build_autoencoder(config: Config) -> RobustAutoencoder:
    enc = config.encoder
    return RobustAutoencoder(enc.backbone, enc.layer, enc.feature_layers, enc.width, config.autoencoder.decoder_width)
