"""The run directory: everything a trained category model consists of, and how to read it back.

``runs/<category>/``: ``model.pt`` (weights only), ``config.yaml`` (everything needed to rebuild the
model), ``calibration.json``, ``verification.npz`` (a few held-out normal and defect images that ``export``
checks the ONNX file on), ``losses.csv``, ``reconstructions.png``, ``training.json``; while training also
``checkpoint.pt`` (optimiser state, for ``--resume``) and ``encoder.pt`` (the robust encoder). A training
holds the folder's lock (``.robust-ad.lock``): readers and a second writer are refused meanwhile.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robust_ad.config import Config, config_from_dict
from robust_ad.errors import ConfigError, ModelError
from robust_ad.fileio import refuse_if_busy, write_atomic, write_yaml
from robust_ad.tensors import load_checkpoint

MODEL = "model.pt"
CONFIG = "config.yaml"
CALIBRATION = "calibration.json"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
LOSSES = "losses.csv"
GRID = "reconstructions.png"
TRAINING = "training.json"
VERIFICATION = "verification.npz"
RUNS = "runs"  # where 'train' writes by default, and where 'score' looks for a model when given none
# calibration.json numbers that must be finite (a NaN threshold would pass every part as normal)
_FINITE = ("threshold", "score_mean", "score_std", "map_vmax")


def write_config(run_dir: str | Path, config: Config) -> Path:
    return write_yaml(Path(run_dir) / CONFIG, config.to_dict())


def is_finished(run_dir: str | Path) -> bool:
    """Whether a run folder holds a finished training (a model, and its calibration for a detector)."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL).is_file() or not (run_dir / CONFIG).is_file():
        return False
    return (run_dir / CALIBRATION).is_file() or read_config(run_dir).mode == "denoise"


def is_unfinished(run_dir: str | Path) -> bool:
    """Whether a run folder holds a training that stopped before the end (what ``--resume`` continues)."""
    return (Path(run_dir) / CONFIG).is_file() and not is_finished(run_dir)


def find_run(category: str | None = None, runs: str | Path = RUNS) -> Path:
    """The run of ``category`` in ``runs``, else (no category) the most recently trained finished run there."""
    runs = Path(runs)
    if category:
        if not is_finished(runs / category):
            raise ModelError(f"no finished run for category '{category}' in {runs}/ (train one, or pass --model)")
        return runs / category
    finished = [p for p in runs.iterdir() if p.is_dir() and is_finished(p)] if runs.is_dir() else []
    if not finished:
        raise ModelError(f"no --model given and no finished run in {runs}/ (train one with 'robust-ad train')")
    return max(finished, key=lambda p: os.stat(p / MODEL).st_mtime)


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise ModelError(f"model folder {run_dir} not found (train one with 'robust-ad train')")
    if not path.is_file():
        raise ModelError(f"{run_dir} is not a robust-ad run folder (no {CONFIG})")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: unreadable run configuration ({str(exc).splitlines()[0]})") from exc
    except ConfigError as exc:
        raise ModelError(str(exc)) from exc


def read_calibration(run_dir: str | Path) -> dict[str, Any]:
    """calibration.json, refused when a number that decides verdicts is missing or not finite."""
    calibration = read_json(run_dir, CALIBRATION)
    for key in _FINITE:
        value = calibration.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ModelError(f"{Path(run_dir) / CALIBRATION}: '{key}' is {value!r}, not a finite number")
    if calibration["score_std"] <= 0:
        raise ModelError(f"{Path(run_dir) / CALIBRATION}: 'score_std' must be positive")
    return calibration


def write_verification(run_dir: str | Path, normal: np.ndarray, defect: np.ndarray) -> Path:
    """The images ``export`` checks the ONNX file on: (N, H, W, 3) float RGB in [0, 1], stored as 8-bit."""

    def as_uint8(images: np.ndarray) -> np.ndarray:
        return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)

    return write_atomic(
        Path(run_dir) / VERIFICATION,
        lambda tmp: np.savez_compressed(tmp, normal=as_uint8(normal), defect=as_uint8(defect)),
    )


def read_verification(run_dir: str | Path) -> dict[str, np.ndarray]:
    """{'normal': (N, H, W, 3) uint8, 'defect': (M, H, W, 3) uint8} held-out images of the run's category."""
    path = Path(run_dir) / VERIFICATION
    if not path.is_file():
        raise ModelError(
            f"{run_dir} has no {VERIFICATION} (trained by an older robust-ad): retrain it, or pass --no-verify"
        )
    try:
        with np.load(path) as data:
            return {"normal": data["normal"], "defect": data["defect"]}
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: corrupt verification images ({exc})") from exc


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    path = Path(run_dir) / name
    refuse_if_busy(run_dir, "run folder")
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {name}: the run did not finish (rerun 'robust-ad train --resume')")
    try:
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt JSON ({exc.msg})") from exc


def _refuse_constant(name: str) -> None:
    raise ModelError(f"non-finite number {name} in a run file (not valid JSON)")


def _load(run_dir: str | Path):
    from robust_ad.models.autoencoder import RobustAutoencoder

    config = read_config(run_dir)
    refuse_if_busy(run_dir, "run folder")
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {MODEL}: the run did not finish (rerun 'robust-ad train --resume')")
    payload = load_checkpoint(path)
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
