"""Models from a configuration: the one place where config sections become constructor arguments."""

from __future__ import annotations

from robust_ad.config import Config, EncoderConfig
from robust_ad.models.autoencoder import Reconstructor, RobustAutoencoder
from robust_ad.models.denoiser import SkipDenoiser
from robust_ad.models.encoder import Encoder


def build_encoder(config: EncoderConfig) -> Encoder:
    return Encoder(config.backbone, config.layer, config.feature_layers, config.width)


def build_autoencoder(config: Config) -> Reconstructor:
    """The detection autoencoder, or in denoising mode the denoiser the config names."""
    enc, width = config.encoder, config.autoencoder.decoder_width
    if config.mode == "denoise" and config.denoise.architecture == "skip":
        d = config.denoise
        return SkipDenoiser(
            enc.backbone, enc.layer, enc.feature_layers, enc.width, width, d.min_sigma, d.guard, d.depth
        )
    return RobustAutoencoder(enc.backbone, enc.layer, enc.feature_layers, enc.width, width)
