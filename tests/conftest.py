"""Shared fixtures: small datasets generated on the fly (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from robust_ad.data.images import write_image
from robust_ad.data.synth import synthesize

os.environ.setdefault("ROBUST_AD_QUIET", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVTec-layout 'bottle' and 'fabric' category at 64 px."""
    root = tmp_path_factory.mktemp("synth")
    for category in ("bottle", "fabric"):
        synthesize(root, category, size=64, n_train=24, n_test_good=6, n_per_defect=3, seed=1)
    return root


def make_image(path: Path, value: float = 0.5, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = np.clip(value + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
    return write_image(path, image)


def make_mask(path: Path, size: int = 32, box: tuple[int, int, int, int] = (8, 8, 16, 16)) -> Path:
    mask = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    return write_image(path, mask)


def tiny_config(root: Path, category: str = "bottle", **sections: dict):
    """A model small enough to train in seconds on 32 px images."""
    from robust_ad.config import from_scratch, load_config, merge

    overrides = {
        "category": category,
        "data_root": str(root),
        "device": "cpu",
        "precision": "fp32",  # the same arithmetic on every CI machine
        "data": {"image_size": 32, "batch_size": 8},
        "encoder": {"width": 0.125, "epochs": 1, "eps": 0.5, "batch_size": 16},
        "autoencoder": {"epochs": 3, "decoder_width": 0.25},
    }
    config = load_config("synthetic", merge(overrides, sections))
    # a tiny encoder trained per category, unless a test names one
    return config if (sections.get("encoder") or {}).get("pretrained") else from_scratch(config)


def tiny_recipe(tmp_path: Path, **changes: dict) -> Path:
    """tiny_config as a recipe file (no category or data root), with ``changes`` laid over its sections."""
    import yaml

    values = tiny_config(tmp_path).to_dict()
    for key in ("category", "data_root"):
        values.pop(key)
    for section, settings in changes.items():
        values[section] = {**values[section], **settings}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def tiny_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained (and calibrated) tiny bottle model, shared by the scoring and export tests."""
    from robust_ad.api import train

    return train(tiny_config(synth_root, autoencoder={"epochs": 6}), tmp_path_factory.mktemp("runs") / "bottle")


def make_corpus(corpus: Path, synth_root: Path, per_source: int = 12, side: int = 32) -> Path:
    """A tiny pretraining corpus in the layout of 'datasets corpus': two photographs (bottle, fabric) at two
    resolutions each, ``per_source`` patches per photograph."""
    from robust_ad.data.images import read_image

    lines = ["file,kind,source,source_file,licence"]
    for category in ("bottle", "fabric"):
        for index, path in enumerate(sorted((synth_root / category / "train" / "good").glob("*.png"))[:per_source]):
            name = f"images/{category}/{path.name}"
            write_image(corpus / name, read_image(path)[:side, :side])
            lines.append(f"{name},photo,test,{category}_{['1920x1080', '800x600'][index % 2]}.jpg,CC0")
    (corpus / "manifest.csv").write_text("\n".join(lines) + "\n")
    return corpus
