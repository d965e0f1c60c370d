"""Scoring image files: resolve paths, read in batches, predict, write scores and overlays.

No torch here: the same code drives the torch model and the ONNX runtime (a ``Predictor``).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from robust_ad.data.images import IMAGE_SUFFIXES, is_image_file, read_image, resize_image, write_image
from robust_ad.errors import DataError, ImageReadError
from robust_ad.fileio import write_json, write_text
from robust_ad.progress import track
from robust_ad.viz import overlay

log = logging.getLogger(__name__)
# (N, H, W, 3) float images at the model's size → (anomaly maps (N, H, W), normalised scores, raw scores)
Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
COLUMNS = ("path", "score", "normalized_score", "verdict")


@dataclass
class ScoreRun:
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def n_anomalous(self) -> int:
        return sum(row["verdict"] == "anomalous" for row in self.rows)


def resolve_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from folders (recursively), files and glob patterns, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if is_image_file(p))
        elif path.is_file():
            found.append(path)
        elif any(c in str(item) for c in "*?["):
            found += sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image_file(Path(p)))
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found:
        raise DataError(
            f"no images found in {', '.join(map(str, inputs))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return list(dict.fromkeys(found))


def _overlay_name(path: Path, index: int) -> str:
    return f"{index:05d}_{path.stem}.png"


def score_files(
    paths: Sequence[Path],
    predict: Predictor,
    image_size: int,
    threshold: float,
    out: Path,
    vmax: float,
    batch_size: int = 16,
    overlays: bool = True,
) -> ScoreRun:
    """Score ``paths``; unreadable files are reported in the result and skipped, never fatal."""
    run = ScoreRun()
    numbered = list(enumerate(paths))
    batches = [numbered[i : i + batch_size] for i in range(0, len(numbered), batch_size)]
    for batch in track(batches, "scoring images"):
        images, kept = [], []
        for index, path in batch:
            try:
                images.append(read_image(path))
                kept.append((index, path))
            except ImageReadError as exc:
                log.warning("%s", exc)
                run.errors.append({"path": str(path), "error": str(exc)})
        if not kept:
            continue
        # Resized (area) to the model's size and rounded to 8-bit steps: the torch and ONNX (uint8 input)
        # paths then see exactly the same pixels.
        batch_images = np.stack([resize_image(im, image_size) for im in images])
        maps, scores, raw = predict((np.round(batch_images * 255) / 255).astype(np.float32))
        for (index, path), image, amap, score, raw_score in zip(kept, images, maps, scores, raw, strict=True):
            verdict = "anomalous" if score > threshold else "normal"
            row = {"path": str(path), "score": float(raw_score), "normalized_score": float(score), "verdict": verdict}
            if overlays:
                full = cv2.resize(amap, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
                row["overlay"] = f"overlays/{_overlay_name(path, index)}"
                write_image(out / row["overlay"], overlay(image, full, vmax))
            run.rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(run.rows)
    write_text(out / "scores.csv", buffer.getvalue())
    write_json(out / "scores.json", {"threshold": threshold, "images": run.rows, "errors": run.errors})
    return run
