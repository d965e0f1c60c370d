"""Configuration: defaults in code, a recipe YAML over them, CLI flags over that, validated completely at load.

Every key has a type, a range or a set of choices (pydantic, strict: ``image_size: "32"`` is refused, not
guessed). A bad value fails in one line naming the key, the value and what is allowed, before any work starts.
The resolved config is saved with every run (``config.yaml``) and is all that is needed to rebuild the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robust_ad.errors import ConfigError

COMPONENTS = ("pixel", "ssim", "feature", "memory", "nearest", "energy", "colour")
NOISES = ("gaussian", "poisson", "salt_pepper", "jpeg", "sensor")

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Count = Annotated[int, Field(ge=1)]
Range = Annotated[list[Positive], Field(min_length=2, max_length=2)]


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    layout: Literal["auto", "mvtec", "visa", "folder"] = "auto"
    image_size: Annotated[int, Field(ge=16, le=4096)] = 128
    val_fraction: Fraction = 0.15  # held-out normal training images for validation/calibration
    test_normal_fraction: Fraction = 0.2  # folder layout only: normal images moved to test
    batch_size: Count = 16
    skip_bad: bool = False
    workers: Annotated[int, Field(ge=0, le=64)] = 0  # data-loading processes (0: in the training process)
    cache_mb: Annotated[int, Field(ge=0)] = 2048  # decoded training images kept in memory, at most
    on_device: bool = False  # the training set kept on the training device as 8-bit images (no loader per epoch)


class EncoderConfig(_Section):
    backbone: Literal["resnet18", "resnet50", "wide_resnet50_2", "vgg16", "alexnet"] = "resnet18"
    layer: str = "layer2"  # where the backbone is cut; the decoder inverts this layer
    feature_layers: Annotated[list[str], Field(min_length=1)] = ["layer1", "layer2"]
    width: Annotated[float, Field(gt=0, le=4)] = 1.0  # channel multiplier (tests use tiny widths)
    weights: str | None = None  # a robust checkpoint file to load instead of training
    # a published robust encoder by name ('robust-ad encoder list'): the shipped one unless a recipe says (null: train
    # one on the category's proxy task), so that a recipe of a few lines gets what the default recipe gets
    pretrained: str | None = "robust-ad-r18w05-l2-eps1"
    finetune_epochs: Annotated[int, Field(ge=0)] = 0  # proxy-task epochs on the category, from loaded weights
    norm: Literal["l2", "linf"] = "l2"
    eps: NonNegative = 1.0  # PGD radius on [0, 1] images; 0 trains the standard baseline
    pgd_steps: Count = 3
    step_size: Positive | None = None  # default 2.5 * eps / pgd_steps
    proxy_task: Literal["corruption", "rotation", "labels", "labels+corruption"] = "corruption"
    epochs: Annotated[int, Field(ge=0)] = 8
    lr: Positive = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"  # over the epochs (cosine: decay to zero)
    batch_size: Count = 32

    @model_validator(mode="after")
    def _linf_eps_within_pixels(self) -> EncoderConfig:
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(
                f"encoder.eps {self.eps:g} with norm linf is more than the whole pixel range [0, 1] "
                f"(an L-inf radius of {self.eps:g}/255 is {self.eps / 255:.4g})"
            )
        return self


class AutoencoderConfig(_Section):
    epochs: Count = 30  # at least one: an untrained decoder reconstructs nothing, and its run would score as any other
    lr: Positive = 1e-3  # decoder (generator) Adam
    disc_lr: Positive = 1.2e-3  # discriminator Adam, betas (0, 0.9), as in the paper's code
    pixel_loss: Literal["l1", "l2"] = "l1"
    w_pixel: NonNegative = 1.0
    w_colour: NonNegative = 1.0  # each image's mean colour (holds the decoder to it: no colour cast)
    w_feature: NonNegative = 1.0
    w_gan: NonNegative = 0.01
    gan_loss: Literal["hinge", "standard"] = "hinge"
    finetune_encoder: bool = False
    decoder_width: Annotated[float, Field(gt=0, le=4)] = 1.0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # the decoder's learning rate over the epochs
    # the trained decoder is an exponential moving average of its weights over the steps, with this decay (0: the
    # last step's weights). The GAN-trained decoder's last weights are noisy: with the average, eps 1 on the example
    # data (3 seeds) reconstructs bottle at 36.7 dB instead of 30.3; mean image AUROC +0.017 (benchmarks/decoder_ema.py)
    ema: Fraction = 0.995
    # the training images' random symmetries: horizontal flips, or all eight of the square's (flips, 90-degree turns)
    augment: Literal["flip", "dihedral"] = "flip"


class ScoringConfig(_Section):
    # each component's weight in the fused map and on its standardised image score (what each measures:
    # robust_ad/scoring/scorer.py); 0 or absent: unused
    weights: dict[str, NonNegative] = {
        "pixel": 1.0,
        "ssim": 1.0,
        "feature": 1.0,
        "memory": 1.0,
        "nearest": 1.0,
        "energy": 1.0,
        "colour": 0.0,  # off by default: it helps on uniformly coloured textures only (benchmarks/FINDINGS.md)
    }
    smoothing_sigma: NonNegative = 4.0  # pixels at the model's image size
    ssim_window: Annotated[int, Field(ge=3, le=63)] = 11
    image_score: Literal["max", "topk"] = "max"  # how a map becomes an image score: its maximum, or top-k mean
    # how the image score comes from the components: "components", each component's own image score standardised
    # on the held-out normal images and the largest (weighted) taken: an alarm from whichever component sees
    # the defect, each on its own normal spread; "map": the score of the fused map (the heat map either way)
    score_fusion: Literal["components", "map"] = "components"
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    threshold_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.99  # of normalised scores of held-out normals
    # correct the decoder's colour response, fitted on the training images in calibration (its cast, and its response
    # to an image's mean colour: scorer.correct_colour)
    remove_colour_cast: bool = True
    # feature vectors the 'nearest' component searches: a greedy coreset of the training images' finest-layer ones
    nearest_bank: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    # the encoder layers whose vectors 'nearest' compares, joined at the finest one's resolution (each of
    # encoder.feature_layers; empty: the finest feature layer alone), each vector first averaged over its
    # nearest_pool x nearest_pool neighbourhood (1: none; PatchCore's locally aware patch features use 3)
    nearest_layers: list[str] = []
    nearest_pool: Annotated[int, Field(ge=1, le=15)] = 1
    # the networks see each image enlarged this many times (bilinear), its maps brought back to the image size:
    # finer feature grids for small images (PatchCore-class models resize to 224 px or more), at the square of
    # the cost. The decoder, trained at the image size, reconstructs the larger image without retraining.
    upsample: Annotated[int, Field(ge=1, le=4)] = 1

    @field_validator("weights")
    @classmethod
    def _known_components(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown score components {unknown} (choose from {', '.join(COMPONENTS)})")
        if not any(value > 0 for value in weights.values()):
            raise ValueError("every score component has weight 0: give at least one a positive weight")
        return weights

    @field_validator("ssim_window", "nearest_pool")
    @classmethod
    def _odd(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"must be odd, got {window}")
        return window


DEFAULT_COMPONENTS = tuple(c for c, weight in ScoringConfig().weights.items() if weight > 0)  # what scores by default


class DenoiseConfig(_Section):
    # skip: robust features + Haar wavelet skips, correcting the input (robust_ad/models/denoiser.py);
    # mirror: the detection autoencoder's plain decoder (everything through the bottleneck)
    architecture: Literal["skip", "mirror"] = "skip"
    # skip: its own training (they replace the autoencoder section's): a denoiser needs far more steps than
    # the bottleneck decoder, and PSNR is best served by the pixel loss alone ('all': pixel + feature + GAN)
    epochs: Count = 200
    decoder_width: Annotated[float, Field(gt=0, le=4)] = 2.0
    # skip: residual blocks at half resolution before the output. 8 (recipes/mvtec.yaml) denoises better for the same
    # GPU time; on a CPU an epoch takes 2.8 times as long, so the CPU recipes keep none
    depth: Annotated[int, Field(ge=0, le=32)] = 0
    losses: Literal["pixel", "all"] = "pixel"
    # cosine (decay to zero) stopped the 200-epoch example denoisers while they still improved: 3 dB worse
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # skip: the denoiser kept is the moving average of its weights (decay per step; 0: the last step's). Its
    # held-out loss wanders by 5 % from one epoch to the next at a constant learning rate
    ema: Fraction = 0.995
    # skip: the training images' random symmetries (autoencoder.augment). Noise has no orientation, yet all eight
    # of the square's did not help the example denoisers: gravel and fabric level at 1,000 epochs, bottle down at
    # 200 (benchmarks/FINDINGS.md, "The eight symmetries")
    augment: Literal["flip", "dihedral"] = "flip"
    min_sigma: NonNegative = 0.004  # skip: below this estimated (or given) noise level the input is returned as is
    # skip: blend output and input where Stein's unbiased risk estimate is lowest, never above the input's
    # (additive Gaussian noise; one more forward pass; robust_ad/models/denoiser.py)
    guard: bool = True
    clean_fraction: Fraction = 0.1  # training images left clean (the denoiser learns to leave them alone)
    noises: Annotated[list[Literal[NOISES]], Field(min_length=1)] = list(NOISES)
    gaussian_sigma: Range = [0.005, 0.25]  # blind: one model for this whole range of sigma (on [0, 1] pixels)
    poisson_peak: Range = [10.0, 100.0]
    sensor_peak: Range = [10.0, 100.0]  # sensor: shot noise at this many photons at white, plus read noise
    salt_pepper_amount: Range = [0.005, 0.05]
    jpeg_quality: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=2, max_length=2)] = [10, 60]


class Config(_Section):
    mode: Literal["detect", "denoise"] = "detect"
    # Training arithmetic: bf16 autocast, or fp16 autocast with gradient scaling (CUDA only; else fp32); auto: bf16
    # on a CPU that computes it in hardware (AMX or AVX-512 BF16), else fp32 (robust_ad/training/engine.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the networks a training step runs (fewer, fused kernels on GPUs; the first steps compile)
    compile: bool = False
    category: str = ""
    data_root: str = ""
    seed: Annotated[int, Field(ge=0)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    # Per-category overrides inside a recipe: {category: {section: {key: value}}}
    categories: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _l2_eps_within_images(self) -> Config:
        diameter = math.sqrt(3) * self.data.image_size  # between a black and a white image of the training size
        if self.encoder.norm == "l2" and self.encoder.eps > diameter:
            raise ValueError(
                f"encoder.eps {self.encoder.eps:g} (L2) is larger than the distance between a black and a white "
                f"{self.data.image_size} px image ({diameter:.0f}): robust classifiers use 0.25 to 5"
            )
        return self

    @model_validator(mode="after")
    def _nearest_layers_are_features(self) -> Config:
        unknown = [layer for layer in self.scoring.nearest_layers if layer not in self.encoder.feature_layers]
        if unknown:
            raise ValueError(
                f"scoring.nearest_layers {unknown} are not among encoder.feature_layers {self.encoder.feature_layers}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude={"categories"})


def _one_line(exc: ValidationError, where: str) -> ConfigError:
    """The first problem of a validation error as one line: key, bad value, what is allowed."""
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] or (first["type"] == "value_error" and isinstance(first["input"], dict)):
        # a check across sections, or of a whole section, names its keys itself
        return ConfigError(f"{where}: {message}")
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{where}: unknown key '{key}'")
    others = [".".join(str(part) for part in error["loc"]) for error in exc.errors()[1:]]
    more = f" (and {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else ""
    return ConfigError(f"{where}: {key} = {first['input']!r} is not valid: {message}{more}")


def validate(values: dict[str, Any], where: str) -> Config:
    """A complete, checked Config from nested values (missing keys take their defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        raise _one_line(exc, where) from None


def _shipped_recipes() -> Path:
    """The installed package's recipes, or a source checkout's ``recipes/``: run from a clone, its ``robust_ad``
    shadows an installed (non-editable) one, and the checkout has no ``robust_ad/recipes``."""
    try:
        return Path(str(resources.files("robust_ad.recipes")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "recipes"


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe given as a path, or as the name of a recipe shipped in ``recipes/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _shipped_recipes() / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"recipe {name_or_path} not found (give a YAML path or a name from recipes/)")


class _RecipeLoader(yaml.SafeLoader):
    """YAML as people write recipes: 1e-3 is a number (YAML 1.1 reads it as a string), and a key given twice is an
    error (the last one silently won, dropping the first block's other settings)."""


def _unique_mapping(loader: _RecipeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': its keys may be given again here
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):  # construct_mapping says what is wrong with it
            continue
        if key in seen:
            raise ConfigError(f"'{key}' is given twice (line {key_node.start_mark.line + 1}): merge the two into one")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*(\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.load(path.read_text(), Loader=_RecipeLoader) or {}  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except (UnicodeDecodeError, OSError) as exc:  # a binary file, a folder, one without read permission
        raise ConfigError(f"{path} is not a readable YAML text file ({type(exc).__name__})") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the recipe (and its per-category overrides), then ``overrides``; checked as a whole.

    ``overrides`` is nested like the recipe; ``None`` values are ignored so that unset CLI flags do
    not mask recipe values.
    """
    values: dict[str, Any] = {}
    where = "options"
    if recipe is not None:
        path = recipe_path(recipe)
        values, where = _read_yaml(path), f"recipe {path.name} with options"
    overrides = _drop_none(overrides or {})
    category = overrides.get("category") or values.get("category")
    per_category = values.get("categories") or {}
    if isinstance(per_category, dict) and category in per_category:
        values = _layer(values, per_category[category])
    return validate(_layer(values, overrides), where)


ARCHITECTURE = ("backbone", "width", "norm")  # what an encoder's weights fit
NAMED_ENCODER_DECIDES = (*ARCHITECTURE, "eps")  # a named encoder's architecture, and the eps it is robust at


def _layer(base: dict[str, Any], update: Any) -> dict[str, Any]:
    """:func:`merge`, where an ``update`` that names another encoder (``encoder.pretrained``) also takes the place
    of the ``base``'s architecture and eps: they described the base's own encoder (``--encoder resnet50_l2_eps3`` on
    a recipe that names resnet18). What the update itself says still counts, and is checked against the encoder."""
    encoder = update.get("encoder") if isinstance(update, dict) else None
    if isinstance(encoder, dict) and "pretrained" in encoder and isinstance(base.get("encoder"), dict):
        kept = {k: v for k, v in base["encoder"].items() if k not in NAMED_ENCODER_DECIDES}
        base = {**base, "encoder": kept}
    return merge(base, update)


def for_mode(config: Config) -> Config:
    """The config a run trains with: in denoising mode with the skip denoiser, the denoiser's own epochs,
    decoder width, learning-rate schedule and losses in the autoencoder section (idempotent; saved with the run)."""
    if config.mode != "denoise" or config.denoise.architecture != "skip":
        return config
    d = config.denoise
    update: dict[str, Any] = {"epochs": d.epochs, "decoder_width": d.decoder_width, "lr_schedule": d.lr_schedule}
    update |= {"ema": d.ema, "augment": d.augment}
    if d.losses == "pixel":
        update |= {"w_feature": 0.0, "w_gan": 0.0}
    return config.model_copy(update={"autoencoder": config.autoencoder.model_copy(update=update)})


def from_scratch(config: Config) -> Config:
    """``config`` without its named pretrained encoder: the encoder comes from ``encoder.weights`` when given,
    else it is trained on the category's proxy task (``--encoder scratch``)."""
    return config.model_copy(update={"encoder": config.encoder.model_copy(update={"pretrained": None})})


def config_from_dict(values: Any, source: str = "config.yaml") -> Config:
    """Rebuild a config saved with ``Config.to_dict`` (checked like a recipe)."""
    return validate(values, source)


def merge(base: dict[str, Any], update: Any) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, mappings merged key by key."""
    if not isinstance(update, dict):
        raise ConfigError(f"per-category overrides must be a mapping, got {type(update).__name__}")
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
