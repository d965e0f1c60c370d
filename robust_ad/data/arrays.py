"""Load samples into memory as arrays at the model's image size (errors name the file)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robust_ad.data.images import SKIP_BAD_HINT, read_image, read_mask, resize_mask
from robust_ad.data.layouts import Sample
from robust_ad.data.resize import resize_image
from robust_ad.errors import DataError, ImageReadError
from robust_ad.progress import track

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Images (N, H, W, 3) float32 in [0, 1], masks (N, H, W) bool, labels, their samples, and the files'
    own (height, width) before resizing (N, 2)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    samples: list[Sample]
    original_sizes: np.ndarray

    @property
    def aspect_ratio(self) -> float:
        """Median width / height of the files: what the model was shown before the square resize."""
        return float(np.median(self.original_sizes[:, 1] / self.original_sizes[:, 0]))


def load_samples(
    samples: Sequence[Sample], size: int, skip_bad: bool = False, description: str = "loading images"
) -> ImageSet:
    """Read, convert and resize ``samples``. A bad file raises, or is skipped with a warning."""
    images, masks, kept, sizes = [], [], [], []
    for sample in track(samples, description):
        try:
            image = read_image(sample.path)
            mask = np.zeros(image.shape[:2], bool)
            if sample.mask_path is not None:
                mask = read_mask(sample.mask_path)
                if mask.shape != image.shape[:2]:
                    raise ImageReadError(
                        f"{sample.mask_path}: mask size {mask.shape[::-1]} differs from its image "
                        f"{sample.path.name} {image.shape[1::-1]}"
                    )
        except ImageReadError as exc:
            if not skip_bad:
                raise ImageReadError(f"{exc} ({SKIP_BAD_HINT})") from exc
            log.warning("skipping %s", exc)
            continue
        images.append(resize_image(image, size))
        masks.append(resize_mask(mask, size))
        kept.append(sample)
        sizes.append(image.shape[:2])
    if not kept:
        raise DataError("no readable images to load")
    return ImageSet(
        np.stack(images).astype(np.float32),
        np.stack(masks),
        np.array([s.label for s in kept], np.int64),
        kept,
        np.array(sizes, np.int64),
    )
