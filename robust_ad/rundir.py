"""The run folder: the one module that reads and writes what a trained category model consists of.

``runs/<category>/``: ``model.pt`` (weights and the feature-memory statistics), ``config.yaml`` (everything needed
to rebuild the model), ``calibration.json`` (:class:`Calibration`: the threshold and every normalisation statistic;
the only place they live), ``verification.npz`` (held-out normal and defect images that ``export`` checks the ONNX
file on), ``losses.csv``, ``reconstructions.png``, ``training.json`` (:class:`TrainingInfo`), ``split.json`` (the
images it trained and calibrated on); while training also ``checkpoint.pt`` (for ``--resume``) and ``encoder.pt``
(the robust encoder). A training holds the folder's lock (``.robust-ad.lock``): readers and a second writer are
refused meanwhile. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from robust_ad import __version__
from robust_ad.config import Config, config_from_dict
from robust_ad.data.dataset import AnomalyDataset
from robust_ad.errors import ConfigError, ModelError
from robust_ad.fileio import refuse_if_busy, write_atomic, write_json, write_text, write_yaml
from robust_ad.scoring.scorer import AnomalyScorer
from robust_ad.tensors import load_checkpoint, save_checkpoint
from robust_ad.training.build import build_autoencoder

MODEL = "model.pt"
CONFIG = "config.yaml"
CALIBRATION = "calibration.json"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
LOSSES = "losses.csv"
GRID = "reconstructions.png"
TRAINING = "training.json"
VERIFICATION = "verification.npz"
SPLIT = "split.json"  # the images a run trained and calibrated on, relative to its data root
RUNS = "runs"  # where 'train' writes by default, and where 'score' looks for a model when given none
MODEL_FORMAT = "robust-ad-model"

Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]
RGB = Annotated[list[Finite], Field(min_length=3, max_length=3)]  # one value per colour channel


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(_Record):
    weight: Finite
    mean: Finite
    std: PositiveFinite
    # its image scores over the held-out normal images (score_fusion "components"); none before they were fitted
    score_mean: Finite | None = None
    score_std: PositiveFinite | None = None


class Calibration(_Record):
    """calibration.json: how raw maps and scores become normalised ones, and where the verdict switches."""

    threshold: Finite  # on the normalised score; a NaN here would pass every part as normal
    threshold_rule: str
    score_mean: Finite
    score_std: PositiveFinite
    map_vmax: PositiveFinite  # heat-map colour scale (normal std units)
    components: dict[str, Component]
    image_score: Literal["max", "topk"]
    score_fusion: Literal["components", "map"] = "map"  # calibrations written before it existed scored the fused map
    image_size: int
    normal_scores: list[Finite]  # normalised scores of the held-out normal images
    train_aspect_ratio: PositiveFinite = 1.0
    # the largest difference between a training image's channels: about 0 for a monochrome camera; none in
    # calibrations written before it was kept
    train_channel_spread: NonNegativeFinite | None = None
    # [[lowest R, G, B], [highest R, G, B]] mean colour of the training images; none in calibrations of before
    train_colour_range: list[list[Finite]] | None = None
    # the decoder's mean colour cast (R, G, B; pixel values in [0, 1]) on the normal training images, removed from
    # every reconstruction in scoring; none in calibrations written before it was fitted
    colour_offset: RGB = [0.0, 0.0, 0.0]
    # its response to an image's mean colour (a row per output channel, scorer.correct_colour); the identity in
    # calibrations written before it was fitted
    colour_matrix: Annotated[list[RGB], Field(min_length=3, max_length=3)] = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    previous_thresholds: list[dict[str, Any]] = []  # what 'robust-ad threshold' replaced, newest last

    def normal_images_above(self) -> int:
        """How many of the held-out normal images score above the threshold (false alarms at calibration)."""
        return sum(score > self.threshold for score in self.normal_scores)

    @model_validator(mode="after")
    def _component_scores_fitted(self) -> Calibration:
        missing = [k for k, c in self.components.items() if c.score_mean is None or c.score_std is None]
        if self.score_fusion == "components" and missing:
            raise ValueError(f"score_fusion 'components' without the score statistics of {', '.join(missing)}")
        return self


class TrainingInfo(_Record):
    """training.json: where, how long and from what a run was trained."""

    category: str
    eps: float
    device: str
    machine: str
    minutes: float
    decoder_minutes: float
    processes: int = 1  # torchrun processes that trained it (DistributedDataParallel)
    precision: str = "fp32"
    encoder_source: str
    encoder_minutes: float
    encoder_history: list[dict[str, float]] = []
    # per-channel (R, G, B) mean colour error of held-out normal reconstructions, 8-bit grey levels: as scoring
    # uses them (the colour cast removed) in detection mode, the decoder's own in denoising mode
    colour_error_255: list[float] = []
    # detection: the decoder's own colour error, before its cast (fitted on the training images) is removed
    decoder_colour_error_255: list[float] = []
    finished: str = ""  # when the training finished (ISO 8601, UTC); runs of before: empty


# -- configuration -----------------------------------------------------------------------------------------
def write_config(run_dir: str | Path, config: Config) -> Path:
    return write_yaml(Path(run_dir) / CONFIG, config.to_dict())


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG
    if Path(run_dir).is_file():  # model.pt or an exported model.onnx: the folder is what is asked for
        onnx = " ('score --onnx' runs an ONNX file)" if Path(run_dir).suffix == ".onnx" else ""
        raise ModelError(f"{run_dir} is a file, not a run folder: give the folder 'robust-ad train' wrote{onnx}")
    if not Path(run_dir).is_dir():
        raise ModelError(f"model folder {run_dir} not found (train one with 'robust-ad train')")
    if not path.is_file():
        raise ModelError(f"{run_dir} is not a robust-ad run folder (no {CONFIG})")
    try:
        values = yaml.safe_load(path.read_text())
        if isinstance(values, dict) and isinstance(values.get("scoring"), dict):
            # runs written before score_fusion existed were calibrated on the fused map, and score as they did
            values["scoring"].setdefault("score_fusion", "map")
        return config_from_dict(values, str(path))
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: unreadable run configuration ({str(exc).splitlines()[0]})") from exc
    except ConfigError as exc:
        raise ModelError(str(exc)) from exc


# -- state of a run ----------------------------------------------------------------------------------------
def is_finished(run_dir: str | Path) -> bool:
    """Whether a run folder holds a finished training (a model, and its calibration for a detector)."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL).is_file() or not (run_dir / CONFIG).is_file():
        return False
    return (run_dir / CALIBRATION).is_file() or read_config(run_dir).mode == "denoise"


def is_unfinished(run_dir: str | Path) -> bool:
    """Whether a run folder holds a training that stopped before the end (what ``--resume`` continues)."""
    return (Path(run_dir) / CONFIG).is_file() and not is_finished(run_dir)


def trained_seconds(run_dir: str | Path) -> float:
    """The epoch seconds an interrupted training has spent so far (its checkpoints' histories), which a resumed
    training counts into its time."""
    files = [Path(run_dir) / name for name in (ENCODER, CHECKPOINT)]
    return sum(row["seconds"] for f in files if f.is_file() for row in load_checkpoint(f).get("history", []))


def find_run(category: str | None = None, runs: str | Path = RUNS) -> Path:
    """The detector of ``category`` in ``runs``, else (no category) the most recently trained finished detector
    there (denoising runs, which cannot score, are passed over)."""
    runs = Path(runs)
    if category:
        if not is_finished(runs / category):
            raise ModelError(f"no finished run for category '{category}' in {runs}/ (train one, or pass --model)")
        return runs / category
    listed = runs.iterdir() if runs.is_dir() else []
    finished = [p for p in listed if p.is_dir() and is_finished(p) and (p / CALIBRATION).is_file()]
    if not finished:
        raise ModelError(f"no --model given and no finished run in {runs}/ (train one with 'robust-ad train')")
    return max(finished, key=_finished_at)


def _finished_at(run_dir: Path) -> float:
    """When a run's training finished, as recorded in training.json: a copy of runs/ (a backup restored, a line PC
    set up) gives every model.pt the time of the copy, and the file times chose an older model. Runs trained before
    the time was recorded: their model.pt's time."""
    try:
        return datetime.fromisoformat(read_training(run_dir).finished).timestamp()
    except (ModelError, ValueError):  # no training.json, or no time in it
        return os.stat(run_dir / MODEL).st_mtime


# -- records ---------------------------------------------------------------------------------------------------
def _refuse_constant(name: str) -> None:
    raise ModelError(f"non-finite number {name} in a run file (not valid JSON)")


def _read_json(path: Path) -> Any:
    refuse_if_busy(path.parent, "run folder")
    if not path.is_file():
        raise ModelError(f"{path.parent} has no {path.name}: the run did not finish (rerun 'robust-ad train --resume')")
    try:
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt JSON ({exc.msg})") from exc


def _record(cls: type[BaseModel], path: Path) -> Any:
    try:
        return cls.model_validate(_read_json(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across keys (a model validator)
            raise ModelError(f"{path}: {first['msg'].removeprefix('Value error, ')}") from None
        key = ".".join(str(part) for part in first["loc"])
        raise ModelError(f"{path}: '{key}' is {first.get('input')!r}: {first['msg']}") from None


def read_calibration(run_dir: str | Path) -> Calibration:
    """calibration.json, refused when a number that decides verdicts is missing or not finite."""
    _refuse_denoiser(run_dir)
    return _record(Calibration, Path(run_dir) / CALIBRATION)


def _refuse_denoiser(run_dir: str | Path, config: Config | None = None) -> None:
    """Scores, evaluations and thresholds need a detector: a denoising run has neither scorer nor calibration.
    ``config``: the run's, when already read."""
    if config is None and (Path(run_dir) / CONFIG).is_file():
        config = read_config(run_dir)
    if config is not None and config.mode == "denoise":
        raise ModelError(
            f"{run_dir} is a denoising model (--mode denoise): this needs a detection model ('robust-ad train' "
            f"without --mode denoise); denoise with 'robust-ad denoise --model {run_dir}'"
        )


def write_calibration(run_dir: str | Path, calibration: Calibration) -> Path:
    return write_json(Path(run_dir) / CALIBRATION, calibration.model_dump())


def read_training(run_dir: str | Path) -> TrainingInfo:
    return _record(TrainingInfo, Path(run_dir) / TRAINING)


def write_training(run_dir: str | Path, info: TrainingInfo) -> Path:
    return write_json(Path(run_dir) / TRAINING, info.model_dump())


def write_losses(run_dir: str | Path, history: list[dict[str, float]]) -> Path:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(history)
    return write_text(Path(run_dir) / LOSSES, buffer.getvalue())


def write_split(run_dir: str | Path, dataset: AnomalyDataset) -> Path:
    """The images the run trained (train) and calibrated (val) on, relative to the dataset's root: what it has
    seen, for traceability and for ``eval``, which leaves them out of a test split that has changed since."""
    relative = {
        split: [s.path.relative_to(dataset.root).as_posix() for s in getattr(dataset, split)]
        for split in ("train", "val")
    }
    return write_json(Path(run_dir) / SPLIT, relative)


def seen_images(run_dir: str | Path) -> set[str]:
    """The images (relative to the data root) the run trained or calibrated on; empty for runs before split.json."""
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        return set()
    record = _read_json(path)
    return {name for split in ("train", "val") for name in record.get(split, [])}


def model_digest(run_dir: str | Path) -> str:
    """SHA-256 of the run's model file: which model an evaluation measured, wherever the run folder is now."""
    from robust_ad.training.pretrained import sha256_of

    return sha256_of(Path(run_dir) / MODEL)


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


# -- the model ---------------------------------------------------------------------------------------------
def save_model(run_dir: str | Path, model: torch.nn.Module, memory: dict[str, torch.Tensor] | None = None) -> Path:
    """model.pt: the autoencoder's weights and (detectors) the feature-memory statistics; no optimiser state."""
    payload = {"format": MODEL_FORMAT, "version": __version__, "weights": model.state_dict()}
    if memory is not None:
        payload["memory"] = {k: v.detach().cpu() for k, v in memory.items()}
    return save_checkpoint(Path(run_dir) / MODEL, payload)


def _load(run_dir: str | Path) -> tuple[Any, dict, Path, Config]:
    config = read_config(run_dir)
    refuse_if_busy(run_dir, "run folder")
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise ModelError(f"{run_dir} has no {MODEL}: the run did not finish (rerun 'robust-ad train --resume')")
    payload = load_checkpoint(path)
    if payload.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a robust-ad model file")
    model = build_autoencoder(config)
    try:
        model.load_state_dict(payload["weights"])
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip()
        raise ModelError(
            f"{path}: weights do not match config.yaml and this robust-ad's networks ({detail}); a model saved by "
            "an older robust-ad must be retrained ('robust-ad train')"
        ) from exc
    return model.eval(), payload, path, config


def load_model(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The trained autoencoder of a run folder, in eval mode on ``device``."""
    return _load(run_dir)[0].to(device)


def load_scorer(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The calibrated detector of a run folder, in eval mode on ``device``: memory statistics from model.pt,
    normalisation from calibration.json."""
    model, payload, path, config = _load(run_dir)
    _refuse_denoiser(run_dir, config)  # before the check below, whose 'retrain' would mislead
    if "memory" not in payload:
        raise ModelError(f"{path}: not a calibrated detector of this robust-ad version (retrain it: 'robust-ad train')")
    calibration = _record(Calibration, Path(run_dir) / CALIBRATION)  # read_calibration less a second config read
    scorer = AnomalyScorer(model, config.scoring, config.data.image_size)
    try:
        scorer.load_memory(payload["memory"])
        scorer.load_normalisation(calibration.model_dump())
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{path}: scoring statistics do not match config.yaml ({exc})") from exc
    return scorer.to(device).eval()
