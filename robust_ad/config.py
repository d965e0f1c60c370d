"""Configuration: defaults in code, a recipe YAML over them, CLI flags over that.

The resolved config is saved with every run (``config.yaml``) and is all that is needed to rebuild
the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robust_ad.errors import ConfigError


@dataclass
class DataConfig:
    layout: str = "auto"  # auto | mvtec | visa | folder
    image_size: int = 128
    val_fraction: float = 0.15  # held-out normal training images for validation/calibration
    test_normal_fraction: float = 0.2  # folder layout only: normal images moved to test
    batch_size: int = 16
    skip_bad: bool = False


@dataclass
class EncoderConfig:
    backbone: str = "resnet18"  # resnet18 | resnet50 | vgg16 | alexnet
    layer: str = "layer2"  # where the backbone is cut; the decoder inverts this layer
    feature_layers: list[str] = field(default_factory=lambda: ["layer1", "layer2"])
    width: float = 1.0  # channel multiplier (tests use tiny widths)
    weights: str | None = None  # a robust checkpoint to load instead of training
    norm: str = "l2"  # l2 | linf
    eps: float = 1.0  # PGD radius on [0, 1] images; 0 trains the standard baseline
    pgd_steps: int = 3
    step_size: float | None = None  # default 2.5 * eps / pgd_steps
    proxy_task: str = "corruption"  # corruption | rotation | labels
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 32


@dataclass
class AutoencoderConfig:
    epochs: int = 30
    lr: float = 1e-3
    pixel_loss: str = "l1"  # l1 | l2
    w_pixel: float = 1.0
    w_feature: float = 1.0
    w_gan: float = 0.01
    gan_loss: str = "hinge"  # hinge | standard
    finetune_encoder: bool = False
    decoder_width: float = 1.0


@dataclass
class ScoringConfig:
    weights: dict[str, float] = field(
        default_factory=lambda: {"pixel": 1.0, "ssim": 1.0, "feature": 1.0, "memory": 1.0}
    )
    smoothing_sigma: float = 4.0  # pixels at the model's image size
    ssim_window: int = 11
    image_score: str = "max"  # max | topk
    topk_fraction: float = 0.01
    threshold_quantile: float = 0.99  # of normalised scores on held-out normal images


@dataclass
class DenoiseConfig:
    noises: list[str] = field(default_factory=lambda: ["gaussian", "poisson", "salt_pepper", "jpeg"])
    gaussian_sigma: list[float] = field(default_factory=lambda: [0.02, 0.15])
    poisson_peak: list[float] = field(default_factory=lambda: [10.0, 100.0])
    salt_pepper_amount: list[float] = field(default_factory=lambda: [0.005, 0.05])
    jpeg_quality: list[int] = field(default_factory=lambda: [10, 60])


@dataclass
class Config:
    mode: str = "detect"  # detect | denoise
    category: str = ""
    data_root: str = ""
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    # Per-category overrides inside a recipe: {category: {section: {key: value}}}
    categories: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("categories")
        return data


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, value)


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe given as a path, or as the name of a recipe shipped in ``recipes/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("robust_ad.recipes").joinpath(f"{path.stem}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"recipe {name_or_path} not found (give a YAML path or a name from recipes/)")


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the recipe (and its per-category overrides), then ``overrides``.

    ``overrides`` is nested like the recipe; ``None`` values are ignored so that unset CLI flags do
    not mask recipe values.
    """
    config = Config()
    if recipe is not None:
        path = recipe_path(recipe)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        _merge_into(config, values, str(path))
    overrides = _drop_none(overrides or {})
    category = overrides.get("category") or config.category
    if category and category in config.categories:
        _merge_into(config, config.categories[category], f"categories.{category}")
    _merge_into(config, overrides, "options")
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved with ``Config.to_dict``."""
    config = Config()
    _merge_into(config, values, "config.yaml")
    return config


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out
