"""The run directory: everything a trained category model consists of, and how to read it back.

``runs/<category>/``: ``model.pt`` (weights only), ``config.yaml`` (everything needed to rebuild the
model), ``calibration.json``, ``losses.csv``, ``reconstructions.png``, ``training.json``; while training
also ``checkpoint.pt`` (optimiser state, for ``--resume``) and ``encoder.pt`` (the robust encoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from robust_ad.config import Config, config_from_dict
from robust_ad.errors import ConfigError, ModelError
from robust_ad.training import checkpoint

MODEL = "model.pt"
CONFIG = "config.yaml"
CALIBRATION = "calibration.json"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
LOSSES = "losses.csv"
GRID = "reconstructions.png"
TRAINING = "training.json"


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise ModelError(f"model folder {run_dir} not found (train one with 'robust-ad train')")
    if not path.is_file():
        raise ModelError(f"{run_dir} is not a robust-ad run folder (no {CONFIG})")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ConfigError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable run configuration ({str(exc).splitlines()[0]})") from exc


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    path = Path(run_dir) / name
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {name}: the run did not finish (rerun 'robust-ad train --resume')")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt JSON ({exc.msg})") from exc


def _load(run_dir: str | Path):
    from robust_ad.models.autoencoder import RobustAutoencoder

    config = read_config(run_dir)
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {MODEL}: the run did not finish (rerun 'robust-ad train --resume')")
    payload = checkpoint.load(path)
    return RobustAutoencoder.from_payload(config, payload, path), payload, path


def load_model(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The trained autoencoder of a run folder, in eval mode on ``device``."""
    return _load(run_dir)[0].to(device).eval()


def load_scorer(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The calibrated detector of a run folder, in eval mode on ``device``."""
    from robust_ad.scoring.scorer import AnomalyScorer

    model, payload, path = _load(run_dir)
    if "scorer" not in payload:
        raise ModelError(f"{path}: the model was not calibrated (rerun 'robust-ad train')")
    scorer = AnomalyScorer(model, model.config.scoring, model.config.data.image_size)
    try:
        scorer.load_state_dict({**payload["scorer"], **{f"model.{k}": v for k, v in model.state_dict().items()}})
    except RuntimeError as exc:
        raise ModelError(f"{path}: scorer statistics do not match config.yaml") from exc
    return scorer.to(device).eval()
