"""Validate a dataset on disk: every image decodes, masks match their images, splits are usable."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from robust_ad.data.dataset import AnomalyDataset
from robust_ad.data.images import read_raw
from robust_ad.errors import ImageReadError
from robust_ad.progress import track


@dataclass
class CheckReport:
    dataset: AnomalyDataset
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    formats: Counter = field(default_factory=Counter)  # "uint8 RGB" etc. -> count
    masks_matched: int = 0
    defects_without_mask: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems and bool(self.dataset.train) and bool(self.dataset.test)

    def reason(self) -> str:
        """One line saying why the dataset is not usable ('' when it is)."""
        if self.problems:
            extra = len(self.problems) - 1
            more = f" (and {extra} more problem{'s' if extra > 1 else ''}, all listed above)" if extra else ""
            return self.problems[0] + more
        if not self.dataset.test:
            return f"category '{self.dataset.category}' has no test images"
        return ""


_CHANNELS = {1: "gray", 3: "RGB", 4: "RGBA"}


def check_dataset(dataset: AnomalyDataset) -> CheckReport:
    """Decode every image and mask of ``dataset`` and collect what is wrong with it."""
    report = CheckReport(dataset)
    samples = dataset.train + dataset.val + dataset.test
    for sample in track(samples, "checking images"):
        try:
            image = read_raw(sample.path)
        except ImageReadError as exc:
            report.problems.append(str(exc))
            continue
        channels = 1 if image.ndim == 2 else image.shape[2]
        report.sizes[(image.shape[1], image.shape[0])] += 1
        report.formats[f"{image.dtype} {_CHANNELS.get(channels, f'{channels}-channel')}"] += 1
        if sample.label == 0:
            continue
        if sample.mask_path is None:
            report.defects_without_mask += 1
            continue
        try:
            mask = read_raw(sample.mask_path)
        except ImageReadError as exc:
            report.problems.append(str(exc))
            continue
        if mask.shape[:2] != image.shape[:2]:
            report.problems.append(
                f"{sample.mask_path}: mask size {mask.shape[1::-1]} differs from image {image.shape[1::-1]}"
            )
        elif not np.any(mask):
            report.problems.append(f"{sample.mask_path}: mask of a defective image is empty")
        else:
            report.masks_matched += 1
    return report
