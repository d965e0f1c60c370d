"""Scoring image files: resolve paths, read in batches, predict, write scores and overlays.

No torch here: the same code drives the torch model and the ONNX runtime (a ``Predictor``).
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from robust_ad.data.images import IMAGE_SUFFIXES, is_image_file, read_image, write_image
from robust_ad.errors import DataError, ImageReadError
from robust_ad.fileio import json_text, write_texts
from robust_ad.progress import track
from robust_ad.viz import overlay

log = logging.getLogger(__name__)
# Full-size (H, W, 3) float RGB images in [0, 1], any sizes → (anomaly maps (N, S, S) at the model's size,
# normalised scores, raw scores). Each predictor resizes with the product's one resize (robust_ad.data.resize):
# the torch one on the host, the ONNX one inside the graph.
Predictor = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray]]
# scores.csv: a row per input file, in input order; an unreadable one has the verdict 'unreadable' and its reason
# normalized_score is what the verdict compares with the threshold (and what the ONNX graph's 'score' output is)
COLUMNS = ("path", "raw_score", "normalized_score", "verdict", "error", "overlay")  # new columns go last
BATCH_PIXELS = 16_000_000  # a batch of camera frames stops here (one 4000 x 4000 frame): 190 MB of float RGB
OVERLAY_SIDES = (256, 1024)  # an overlay's panels: a camera frame made smaller, a tiny one larger to be seen
OVERLAY_STEM = 100  # characters of a frame's name kept in its overlay's name
NOT_SCORED = "not scored"  # the verdict of a file the command was stopped before


@dataclass
class ScoreRun:
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    model: str = ""  # the run folder or ONNX file that scored them

    @property
    def n_anomalous(self) -> int:
        return sum(row["verdict"] == "anomalous" for row in self.rows)


def as_list(inputs: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """Inputs as a list: one path given alone is one input (a string is not a sequence of characters here)."""
    return [inputs] if isinstance(inputs, str | Path) else list(inputs)


def resolve_paths(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files from folders (recursively), files and glob patterns (one, or a list), in a stable order."""
    found: list[Path] = []
    empty = []
    for item in as_list(inputs):
        path = Path(item)
        if path.is_dir():
            images = _images_under(path)
        elif path.is_file():
            images = [path]
        elif any(c in str(item) for c in "*?["):
            images = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image_file(Path(p)))
        else:
            raise DataError(f"{item}: no such file or folder")
        found += images
        empty += [] if images else [str(item)]
    if not found:
        raise DataError(
            f"no images found in {', '.join(map(str, as_list(inputs)))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if empty:  # one camera's folder among several: a camera that stopped writing frames must not look like a pass
        log.warning("no images in %s", ", ".join(empty))
    unique: dict[Path, Path] = {}
    for path in found:  # a file reached twice (a folder and a file in it, a relative and an absolute path): once
        try:
            unique.setdefault(path.resolve(), path)
        except (OSError, RuntimeError):  # a link loop: read, and reported as unreadable, on its own
            unique.setdefault(path.absolute(), path)
    return list(unique.values())


def _images_under(folder: Path) -> list[Path]:
    """The image files under ``folder``, to any depth (linked folders too, each real folder once), sorted; a
    subfolder that cannot be listed (no permission) comes as itself, to be reported as unreadable (rglob passed
    over it and over linked folders, and a camera's frames went unaccounted)."""
    found: list[Path] = []
    seen = {os.path.realpath(folder)}

    def unlisted(error: OSError) -> None:
        found.append(Path(error.filename))

    for root, dirs, files in os.walk(folder, onerror=unlisted, followlinks=True):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen]  # a link loop: once
        seen.update(os.path.realpath(os.path.join(root, d)) for d in dirs)
        found += [Path(root) / name for name in files if is_image_file(Path(root) / name)]
    return sorted(found)


def output_names(inputs: str | Path | Sequence[str | Path], files: list[Path]) -> dict[Path, str]:
    """Where each of :func:`resolve_paths`' ``files`` goes in an output folder: its path below the folder it was
    found in (a folder given: subfolders are kept, so cameras that name their frames alike stay apart), else its
    name (a file or a glob given)."""
    folders = [Path(item) for item in as_list(inputs) if Path(item).is_dir()]
    names = {}
    for path in files:
        bases = [folder for folder in folders if folder in path.parents]  # the outermost: the same in any order
        names[path] = path.relative_to(min(bases, key=lambda f: len(f.parts))).as_posix() if bases else path.name
    return names


def _overlay_name(path: Path, index: int) -> str:
    """Unique by its index; the stem shortened (a 240-byte name with the atomic write's temporary parts ran past the
    file system's 255)."""
    return f"{index:05d}_{path.stem[:OVERLAY_STEM]}.png"


def _overlay_image(image: np.ndarray) -> np.ndarray:
    """``image`` at the size of an overlay's panel: its longer side within OVERLAY_SIDES (a 4000 px frame gave a
    12,000 px wide overlay, most of score's time and memory; a 4 px one an unreadable verdict)."""
    smallest, largest = OVERLAY_SIDES
    side = max(image.shape[:2])
    factor = largest / side if side > largest else smallest / side if side < smallest else 1.0
    if factor == 1.0:
        return image
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_NEAREST)


def overlay_picture(
    image: np.ndarray, anomaly_map: np.ndarray, vmax: float, caption: str, mask: np.ndarray | None = None
) -> np.ndarray:
    """The overlay of ``image`` and its map (any sizes) at a panel size one can read (:func:`_overlay_image`), with
    the outline of a ground-truth ``mask`` (eval's report: does the heat point at the defect?) drawn in green."""
    shown = _overlay_image(image)
    size = shown.shape[1::-1]
    full = cv2.resize(np.nan_to_num(anomaly_map, nan=vmax), size, interpolation=cv2.INTER_LINEAR)
    picture = overlay(shown, full, vmax, caption)
    if mask is not None and mask.any():
        outline = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        top = picture.shape[0] - shown.shape[0]  # below the caption strip
        for panel in range(3):  # the frame, the blend, the map
            view = np.ascontiguousarray(picture[top:, panel * size[0] : (panel + 1) * size[0]])
            cv2.drawContours(view, contours, -1, (0.0, 1.0, 0.0), max(1, size[0] // 200))
            picture[top:, panel * size[0] : (panel + 1) * size[0]] = view
    return picture


def verdict(score: float, threshold: float) -> str:
    """'anomalous' above the threshold; a non-finite score (a failed model) never passes a part as normal."""
    return "normal" if math.isfinite(score) and score <= threshold else "anomalous"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _read_batches(
    paths: Sequence[Path], batch_size: int, run: ScoreRun, lines: dict[int, dict]
) -> Iterator[tuple[list[tuple[int, Path]], list[np.ndarray]]]:
    """(index, path) and image of each readable file, in batches of ``batch_size`` images or BATCH_PIXELS pixels,
    whichever comes first (ten 16 MP camera frames took 10 GB); unreadable files go into ``run`` and ``lines``."""
    images: list[np.ndarray] = []
    kept: list[tuple[int, Path]] = []
    for index, path in track(list(enumerate(paths)), "scoring images"):
        try:
            images.append(read_image(path))
            kept.append((index, path))
        except ImageReadError as exc:
            log.warning("%s", exc)
            run.errors.append({"path": str(path), "error": str(exc)})
            lines[index] = {"path": str(path), "verdict": "unreadable", "error": str(exc)}
            continue
        if len(images) == batch_size or sum(image.shape[0] * image.shape[1] for image in images) >= BATCH_PIXELS:
            yield kept, images
            images, kept = [], []
    if images:
        yield kept, images


def score_files(
    paths: Sequence[Path],
    predict: Predictor,
    threshold: float,
    out: Path,
    vmax: float,
    batch_size: int = 16,
    overlays: bool = True,
    model: str = "",
) -> ScoreRun:
    """Score ``paths``; unreadable files are reported in the result and skipped, never fatal. Stopped (Ctrl-C,
    SIGTERM), the scores so far are written, the rest listed as 'not scored' (a service stop lost every verdict).
    scores.json names the ``model`` (a run folder or an ONNX file) and when the scoring ended."""
    run = ScoreRun(model=model)
    lines: dict[int, dict] = {}  # scores.csv's rows by input position

    def record(**more: object) -> dict:
        ended = datetime.now(UTC).isoformat(timespec="seconds")
        return {
            "model": str(Path(model).resolve()) if model else "",
            "ended": ended,
            "threshold": threshold,
            **more,
            "images": run.rows,
            "errors": run.errors,
        }

    try:
        _score_batches(paths, predict, threshold, out, vmax, batch_size, overlays, run, lines)
    except (KeyboardInterrupt, SystemExit):
        stopped = "the command was stopped before this file was scored"
        missing = [index for index in range(len(paths)) if index not in lines]
        lines |= {index: {"path": str(paths[index]), "verdict": NOT_SCORED, "error": stopped} for index in missing}
        _write_scores(out, lines, record(stopped=True))
        raise
    _write_scores(out, lines, record())
    return run


def _write_scores(out: Path, lines: dict[int, dict], scores: dict) -> None:
    """scores.csv (a row per input, in input order) and scores.json, together or not at all."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(lines[index] for index in sorted(lines))
    write_texts({out / "scores.csv": buffer.getvalue(), out / "scores.json": json_text(scores)})


def _score_batches(
    paths: Sequence[Path],
    predict: Predictor,
    threshold: float,
    out: Path,
    vmax: float,
    batch_size: int,
    overlays: bool,
    run: ScoreRun,
    lines: dict[int, dict],
) -> None:
    for kept, images in _read_batches(paths, batch_size, run, lines):
        maps, scores, raw = predict(images)
        for (index, path), image, amap, score, raw_score in zip(kept, images, maps, scores, raw, strict=True):
            row = {
                "path": str(path),
                "raw_score": _finite_or_none(raw_score),
                "normalized_score": _finite_or_none(score),
                "verdict": verdict(float(score), threshold),
            }
            if overlays:
                name = f"overlays/{_overlay_name(path, index)}"
                try:
                    write_image(out / name, overlay_picture(image, amap, vmax, f"{row['verdict']} {score:.2f}"))
                    row["overlay"] = name
                except OSError as exc:  # a full disk: the verdicts matter more than their pictures
                    log.warning("overlays are no longer written (%s: %s): the scores are", name, exc.strerror or exc)
                    overlays = False
            run.rows.append(row)
            lines[index] = row
