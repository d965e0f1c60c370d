"""The robust autoencoder: a (frozen) robust encoder and the mirror decoder that inverts it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robust_ad import __version__
from robust_ad.config import Config
from robust_ad.errors import ModelError
from robust_ad.models.decoder import MirrorDecoder
from robust_ad.models.encoder import Encoder

FORMAT = "robust-ad-model"


class RobustAutoencoder(nn.Module):
    """x ↦ D(E(x)), fully convolutional: a model trained at one size runs at another.

    ``scorer`` (set after calibration) turns it into a detector; see :mod:`robust_ad.scoring`.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = Encoder(enc.backbone, enc.layer, enc.feature_layers, enc.width)
        self.decoder = MirrorDecoder(self.encoder, config.autoencoder.decoder_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), x.shape[-2:])

    def features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.encoder.features(x)

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Reconstructions of (N, H, W, 3) float images in [0, 1], same shape."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
            out.append(self(x.to(device)).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    @classmethod
    def fit(cls, config: Config, out: str | Path, resume: bool = False, force: bool = False) -> RobustAutoencoder:
        """Train on ``config.category`` (what ``robust-ad train`` does) and return the trained model."""
        from robust_ad.api import train

        return cls.load(train(config, out, resume=resume, force=force))

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> RobustAutoencoder:
        """The model of a run folder."""
        from robust_ad.rundir import load_model

        return load_model(run_dir, device)

    def save(self, run_dir: str | Path, force: bool = False) -> Path:
        """Write ``model.pt`` and ``config.yaml`` (weights only; no scoring statistics: use ``fit`` for those)."""
        from robust_ad.fileio import check_writable, write_yaml
        from robust_ad.rundir import CONFIG, MODEL
        from robust_ad.tensors import save_checkpoint

        run_dir = Path(run_dir)
        check_writable(run_dir / MODEL, force)
        write_yaml(run_dir / CONFIG, self.config.to_dict())
        return save_checkpoint(run_dir / MODEL, self.payload())

    def payload(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``model.pt`` holds: weights only (no optimizer), plus the format tag."""
        return {"format": FORMAT, "version": __version__, "weights": self.state_dict(), **(extra or {})}

    @classmethod
    def from_payload(cls, config: Config, payload: dict[str, Any], source: str | Path) -> RobustAutoencoder:
        if payload.get("format") != FORMAT:
            raise ModelError(f"{source}: not a robust-ad model file")
        model = cls(config)
        try:
            model.load_state_dict(payload["weights"])
        except RuntimeError as exc:
            raise ModelError(
                f"{source}: weights do not match config.yaml ({str(exc).splitlines()[1].strip()})"
            ) from exc
        return model.eval()
