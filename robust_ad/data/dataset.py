"""One dataset object: train / validation (held-out normals) / test splits of one category."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from robust_ad.data.layouts import LAYOUTS, NORMAL, Sample, detect_layout, read_folder, read_mvtec, read_visa
from robust_ad.errors import DataError


@dataclass
class AnomalyDataset:
    category: str
    layout: str
    root: Path
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    @classmethod
    def load(
        cls,
        root: str | Path,
        category: str,
        layout: str = "auto",
        val_fraction: float = 0.15,
        test_normal_fraction: float = 0.2,
        seed: int = 0,
    ) -> AnomalyDataset:
        """Read a layout and split it. The validation split is a seeded subset of normal train images."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder")
        if layout == "auto":
            layout = detect_layout(root, category)
        if layout not in LAYOUTS:
            raise DataError(f"unknown layout '{layout}' (choose from auto, {', '.join(LAYOUTS)})")
        rng = random.Random(seed)
        if layout == "mvtec":
            train, test = read_mvtec(root, category)
        elif layout == "visa":
            train, test = read_visa(root, category)
        else:
            good, defects = read_folder(root, category)
            good = _shuffled(good, rng)
            n_test = round(len(good) * test_normal_fraction) if defects else 0
            test, train = good[:n_test] + defects, sorted(good[n_test:], key=lambda s: s.path)
        if not train:
            raise DataError(f"category '{category}' under {root} has no normal training images")
        shuffled = _shuffled(train, rng)
        n_val = min(len(train) - 1, max(int(val_fraction > 0), round(len(train) * val_fraction)))
        val, train = shuffled[:n_val], sorted(shuffled[n_val:], key=lambda s: s.path)
        return cls(category, layout, root, train, sorted(val, key=lambda s: s.path), test)

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.test if s.label == 1})

    def mask_count(self, defect_type: str | None = None) -> tuple[int, int]:
        """How many anomalous test images (of ``defect_type``) have a mask, and how many there are."""
        defects = [s for s in self.test if s.label == 1 and defect_type in (None, s.defect_type)]
        return sum(s.mask_path is not None for s in defects), len(defects)

    def has_masks(self, defect_type: str | None = None) -> bool:
        """Whether every anomalous test image (of ``defect_type``) has a mask."""
        masked, total = self.mask_count(defect_type)
        return bool(total) and masked == total

    def counts(self) -> dict[str, Counter]:
        return {
            "train": Counter(s.defect_type for s in self.train),
            "val": Counter(s.defect_type for s in self.val),
            "test": Counter(s.defect_type for s in self.test),
        }


def _shuffled(samples: list[Sample], rng: random.Random) -> list[Sample]:
    out = sorted(samples, key=lambda s: s.path)
    rng.shuffle(out)
    return out


__all__ = ["NORMAL", "AnomalyDataset", "Sample"]
