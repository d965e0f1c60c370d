"""Readers for the supported on-disk layouts. Each returns (normal training samples, test samples)."""

from __future__ import annotations

import csv
import io
import posixpath
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from robust_ad.data.images import list_images
from robust_ad.errors import DataError

NORMAL = "good"
LAYOUTS = ("mvtec", "visa", "folder")


@dataclass(frozen=True)
class Sample:
    """One image: its label (0 normal, 1 anomalous), defect type and optional mask file."""

    path: Path
    label: int
    defect_type: str = NORMAL
    mask_path: Path | None = None


def detect_layout(root: Path, category: str) -> str:
    """Guess the layout from the folder structure."""
    if (root / category / "train" / NORMAL).is_dir():
        return "mvtec"
    if (root / category / "Data" / "Images").is_dir():
        return "visa"
    if (root / category / NORMAL).is_dir() or (root / NORMAL).is_dir():
        return "folder"
    raise DataError(
        f"no dataset found for category '{category}' under {root}: expected {category}/train/good "
        f"(MVTec AD), {category}/Data/Images (VisA) or good/ (plain folder)"
    )


def read_mvtec(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """MVTec AD: train/good, test/<defect>/, ground_truth/<defect>/<stem>_mask.png (masks optional; <stem>.png and
    any image suffix are taken too)."""
    base = root / category
    train = [Sample(p, 0) for p in list_images(base / "train" / NORMAL)]
    test: list[Sample] = []
    test_dir = base / "test"
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []:
        defect = defect_dir.name
        # MVTec names masks <stem>_mask.png; anomalib's converted VisA (visa_pytorch) uses <stem>.png; any image
        # suffix is taken, as in the folder layout (a mask saved as .jpg or .PNG was left out)
        masks = _by_stem(base / "ground_truth" / defect) if defect != NORMAL else {}
        for path in list_images(defect_dir):
            if defect == NORMAL:
                test.append(Sample(path, 0))
            else:
                test.append(Sample(path, 1, defect, _mask_of(path, masks)))
    return train, test


def layout_folders(root: Path, category: str, layout: str) -> tuple[Path | None, list[Path]]:
    """Where ``layout`` keeps masks, and its defect-type folders (VisA: none, its split file names every file)."""
    if layout == "mvtec":
        base, types = root / category, root / category / "test"
        masks = base / "ground_truth"
    elif layout == "folder":
        base = _folder_base(root, category)
        masks, types = base / "masks", base / "defect"
    else:
        return None, []
    return masks, sorted(d for d in types.iterdir() if d.is_dir()) if types.is_dir() else []


def _folder_base(root: Path, category: str) -> Path:
    """The plain-folder layout's folder: ``root``/``category`` when it holds good/, else ``root`` itself."""
    return root / category if (root / category / NORMAL).is_dir() else root


def category_folder(root: Path, category: str, layout: str) -> Path:
    """The folder that holds a category's images in ``layout``."""
    return _folder_base(root, category) if layout == "folder" else root / category


READ_FROM = {  # where each layout reads images, as a note says it
    "mvtec": "train/good/ and test/<type>/ (not their subfolders)",
    "visa": "the rows of the split file",
    "folder": "good/, defect/ and defect/<type>/ (not their subfolders)",
}


VISA_LABELS = ("normal", "anomaly")  # the label column's words in VisA's split files


def read_visa(root: Path, category: str, split_csv: Path | None = None) -> tuple[list[Sample], list[Sample]]:
    """VisA: the split CSV (columns object, split, label, image, mask; paths relative to ``root``)."""
    split_csv = split_csv or root / "split_csv" / "1cls.csv"
    if not split_csv.is_file():
        raise DataError(f"VisA split file {split_csv} not found (expected <root>/split_csv/1cls.csv)")
    train: list[Sample] = []
    test: list[Sample] = []
    lines: dict[str, int] = {}
    try:
        text = split_csv.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark too
    except UnicodeDecodeError:
        raise DataError(
            f"{split_csv}: not UTF-8 text (a spreadsheet's 'Unicode text' is UTF-16): save it as CSV UTF-8"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
    if missing:
        header = text.partition("\n")[0]
        other = next((sep for sep in ";\t|" if sep in header and "," not in header), None)
        hint = f" (its header is separated by {other!r}: save it with commas)" if other else ""
        raise DataError(f"{split_csv}: missing columns {', '.join(sorted(missing))}{hint}")
    for line, row in enumerate(reader, start=2):
        if row["object"] != category:
            continue
        label, split = row["label"].strip().lower(), row["split"].strip().lower()
        where = f"{split_csv}, line {line}"
        if label not in VISA_LABELS or split not in ("train", "test"):  # a typo must not move an image silently
            raise DataError(
                f"{where}: label {row['label']!r} and split {row['split']!r} must be one of "
                f"{'/'.join(VISA_LABELS)} and train/test"
            )
        anomalous = label == "anomaly"
        if anomalous and split == "train":
            raise DataError(f"{where}: an anomalous image in the train split (robust-ad trains on normal images)")
        image = posixpath.normpath(row["image"].strip())  # ./a/b.png and a//b.png are a/b.png
        if image in lines:
            raise DataError(f"{where}: {image} is listed already (line {lines[image]}): each image once")
        lines[image] = line
        mask = root / row["mask"].strip() if anomalous and row["mask"].strip() else None  # missing: a problem
        sample = Sample(root / image, int(anomalous), "anomaly" if anomalous else NORMAL, mask)
        (train if split == "train" else test).append(sample)
    return train, test


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    """The image files of ``folder`` by stem, any image suffix in any case (a mask.PNG or mask.bmp too)."""
    found: dict[str, list[Path]] = {}
    for path in list_images(folder):
        found.setdefault(path.stem, []).append(path)
    return found


def _mask_of(image: Path, masks: dict[str, list[Path]]) -> Path | None:
    """The one mask among ``masks`` named after ``image`` (<stem> or <stem>_mask, any suffix); two are refused (one
    was picked silently, a lossy JPEG over a PNG)."""
    found = [path for end in ("", "_mask") for path in masks.get(f"{image.stem}{end}", [])]
    if len(found) > 1:
        raise DataError(f"{image} has {len(found)} masks ({', '.join(p.name for p in found)}): keep one")
    return found[0] if found else None


def read_folder(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """Plain folder: good/, defect/ (images, or one subfolder per defect type), optional masks/.

    Masks are matched by stem (any image suffix): masks/<type>/<stem>[_mask].png, else masks/<stem>[_mask].png; a
    mask of the shared folder whose stem names images of several defect types is refused (it would mark the wrong
    type's pixels).
    All images are returned as candidates; the dataset moves a seeded fraction of the good ones to the test split.
    """
    base = _folder_base(root, category)
    good = [Sample(p, 0) for p in list_images(base / NORMAL)]
    defect_dir = base / "defect"
    groups = [(defect_dir, "defect")] if list_images(defect_dir) else []
    if defect_dir.is_dir():
        groups += [(d, d.name) for d in sorted(defect_dir.iterdir()) if d.is_dir()]
    masks = base / "masks"
    images = [(path, defect) for folder, defect in groups for path in list_images(folder)]
    stems = Counter(path.stem for path, _ in images)
    by_stem = {folder: _by_stem(masks / folder) for folder in {"", *(defect for _, defect in images)}}
    defects = []
    for path, defect in images:
        own, shared = _mask_of(path, by_stem[defect]), _mask_of(path, by_stem[""])
        mask = own or shared
        if mask is not None and mask == shared and stems[path.stem] > 1:
            raise DataError(
                f"{mask} matches defect images of several types named {path.stem} (one is {path}): put each type's "
                f"masks in masks/<type>/, or name the images apart"
            )
        defects.append(Sample(path, 1, defect, mask))
    return good, defects
