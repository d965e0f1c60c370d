"""Datasets as the training and evaluation code needs them: split, loaded and resized by the config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from robust_ad.config import Config
from robust_ad.data import AnomalyDataset
from robust_ad.data.arrays import ImageSet, load_samples
from robust_ad.data.locate import find_data_root
from robust_ad.data.torchdata import ImageFiles
from robust_ad.errors import DataError

log = logging.getLogger(__name__)


def open_dataset(config: Config, data_root: str | Path | None = None, category: str | None = None) -> AnomalyDataset:
    """The dataset of ``category`` under ``data_root`` (default: the config's, else searched), split by the seed."""
    category = category or config.category
    if not category:
        raise DataError("no category given (--category)")
    given = data_root or config.data_root
    root = find_data_root(category, given)
    if not given:
        log.info("dataset of '%s': %s", category, root)
    return AnomalyDataset.load(
        root, category, config.data.layout, config.data.val_fraction, config.data.test_normal_fraction, config.seed
    )


def load_split(dataset: AnomalyDataset, split: str, config: Config, size: int | None = None) -> ImageSet:
    """Images of one split ('train', 'val' or 'test') at the model's image size."""
    samples = getattr(dataset, split)
    if not samples:
        raise DataError(f"category '{dataset.category}' has no {split} images")
    return load_samples(
        samples, size or config.data.image_size, config.data.skip_bad, f"loading {dataset.category}/{split}"
    )


def image_files(dataset: AnomalyDataset, split: str, config: Config, labels: list[int] | None = None) -> ImageFiles:
    """The normal images of one split as a lazily read, checked ``torch`` dataset at the model's size."""
    samples = getattr(dataset, split)
    if not samples:
        raise DataError(f"category '{dataset.category}' has no {split} images")
    files = ImageFiles([s.path for s in samples], config.data.image_size, labels, config.data.cache_mb)
    return files.verify(config.data.skip_bad, f"reading {dataset.category}/{split}")


def labelled_files(config: Config, categories: list[str], split: str) -> ImageFiles:
    """Normal images of several categories labelled by category index (the 'labels' proxy task)."""
    paths, labels = [], []
    for index, category in enumerate(categories):
        samples = getattr(open_dataset(config, category=category), split)
        paths += [s.path for s in samples]
        labels += [index] * len(samples)
    files = ImageFiles(paths, config.data.image_size, labels, config.data.cache_mb)
    return files.verify(config.data.skip_bad, f"reading {', '.join(categories)}/{split}")


def labelled_images(config: Config, categories: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normal images of several categories with the category index as label (the 'labels' proxy task)."""
    images, labels = [], []
    for index, category in enumerate(categories):
        loaded = load_split(open_dataset(config, category=category), split, config)
        images.append(loaded.images)
        labels.append(np.full(len(loaded.images), index))
    return np.concatenate(images), np.concatenate(labels)
