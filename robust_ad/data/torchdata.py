"""Images as ``torch.utils.data`` datasets: read from disk lazily (with workers), or from arrays in memory.

Each item is ``(image, label)``: a (3, S, S) float tensor in [0, 1] at the model's size (the product's one
resize) and an integer label (0 unless the proxy task uses labels). ``ImageFiles`` keeps decoded images in
memory only up to ``cache_mb`` megabytes, so memory does not grow with the number of images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robust_ad.data.images import SKIP_BAD_HINT, read_image
from robust_ad.data.resize import resize_image
from robust_ad.errors import DataError, ImageReadError
from robust_ad.progress import track

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Image files resized to ``size``, read when asked for; decoded images cached while under ``cache_mb``."""

    def __init__(self, paths: Sequence[Path], size: int, labels: Sequence[int] | None = None, cache_mb: int = 1024):
        self.paths, self.size = list(paths), size
        self.labels = list(labels) if labels is not None else [0] * len(self.paths)
        self.cache_items = max(0, cache_mb * 2**20 // (3 * size * size * 4))
        self._cache: dict[Path, torch.Tensor] = {}
        self.original_sizes: dict[Path, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> torch.Tensor:
        image = self._cache.get(path)
        if image is None:
            decoded = read_image(path)
            self.original_sizes[path] = decoded.shape[:2]
            image = torch.from_numpy(np.ascontiguousarray(resize_image(decoded, self.size))).permute(2, 0, 1)
            if len(self._cache) < self.cache_items:
                self._cache[path] = image.contiguous()
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._load(self.paths[index]), self.labels[index]

    def verify(self, skip_bad: bool = False, description: str = "reading images") -> ImageFiles:
        """Decode every file once, before any training: an unreadable one raises (or, with ``skip_bad``, is
        dropped with a warning). Fills the cache on the way. Returns the dataset of the readable files."""
        keep = []
        for index, path in enumerate(track(self.paths, description)):
            try:
                self._load(path)
            except ImageReadError as exc:
                if not skip_bad:
                    raise ImageReadError(f"{exc} ({SKIP_BAD_HINT})") from exc
                log.warning("skipping %s", exc)
                continue
            keep.append(index)
        if not keep:
            raise DataError("no readable images")
        self.paths, self.labels = [self.paths[i] for i in keep], [self.labels[i] for i in keep]
        return self

    @property
    def aspect_ratio(self) -> float:
        """Median width / height of the files read so far: what the model saw before the square resize."""
        sizes = np.array(list(self.original_sizes.values()) or [(1, 1)])
        return float(np.median(sizes[:, 1] / sizes[:, 0]))


class ArrayImages(Dataset):
    """(N, H, W, 3) float images in [0, 1] already in memory (tests, notebooks, benchmarks)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(labels if labels is not None else np.zeros(len(images)), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
