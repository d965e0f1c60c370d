"""A corpus of real photographs and photo textures for pretraining robust encoders, from installable packages.

Sources (Debian packages; any folder of photographs can be added):

- photo textures of games: ``ufoai-textures``, ``nexuiz-textures``, ``openarena-081-textures`` (zip/.pk3
  archives inside a package are unpacked). Normal, bump, gloss, specular and height maps are skipped (they are
  not photographs);
- wallpapers that are photographs: ``mate-backgrounds``, ``plasma-workspace-wallpapers``,
  ``lomiri-wallpapers-16.04`` and ``lomiri-wallpapers-20.04``, cut into many square patches.

Packages are fetched with ``apt-get download`` (no root needed once the package lists exist) and unpacked
with ``dpkg-deb -x``, or taken from a folder of ``.deb`` files. Every image written is listed in
``manifest.csv`` with its source package, its file in the package and the package's licence. Nothing is
installed, and no corpus file belongs in the repository.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_ad.data.images import read_image, write_image
from robust_ad.data.resize import resize_image
from robust_ad.data.torchdata import ImageFiles
from robust_ad.errors import DataError, ImageReadError
from robust_ad.fileio import output_folder, write_json, write_text
from robust_ad.progress import track

log = logging.getLogger(__name__)
TEXTURE_PACKAGES = ("ufoai-textures", "nexuiz-textures", "openarena-081-textures")
# lomiri-wallpapers itself holds no pictures (it depends on these); apt-get download fetches no dependencies
PHOTO_PACKAGES = (
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)
DEFAULT_PACKAGES = TEXTURE_PACKAGES + PHOTO_PACKAGES
SUFFIXES = {".jpg", ".jpeg", ".png", ".tga", ".webp", ".bmp", ".tif", ".tiff"}
# maps that describe surfaces rather than show them; matched on the file name, case-insensitive
NOT_PHOTOS = re.compile(
    r"(normal|_norm\b|_nm\b|_n\.|bump|gloss|spec|_s\.|height|_h\.|_glow|_luma|_mask|_alpha|_local|_dot3|screenshot)",
    re.IGNORECASE,
)
COLUMNS = ("file", "kind", "source", "source_file", "licence")


@dataclass
class CorpusSettings:
    patch: int = 128  # side of the square images written
    photo_patches: int = 48  # at most this many patches from one photograph
    min_side: int = 64  # smaller source images are skipped
    min_detail: float = 0.01  # patches flatter than this (std of the Laplacian of grey) are skipped: gradients,
    # logos and flat colour are not photographs


def is_photo_package(package: str) -> bool:
    return any(word in package for word in ("wallpaper", "background"))


def _licence(root: Path, package: str) -> str:
    """The licence named in the package's Debian copyright file (first 'License:' field)."""
    for copyright_file in sorted(root.glob(f"usr/share/doc/{package}*/copyright")):
        for line in copyright_file.read_text(errors="replace").splitlines():
            if line.startswith("License:") and line.split(":", 1)[1].strip():
                return line.split(":", 1)[1].strip()
        return "see usr/share/doc/" + copyright_file.parent.name + "/copyright"
    return "unknown (no copyright file)"


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise DataError(f"{what} failed: {last}")


def _download(packages: Sequence[str], folder: Path) -> list[Path]:
    if shutil.which("apt-get") is None:
        raise DataError("apt-get not found: pass --debs FOLDER with the packages' .deb files")
    for package in track(packages, "downloading packages"):
        try:
            _run(["apt-get", "download", package], f"apt-get download {package}", cwd=folder)
        except DataError as exc:
            raise DataError(f"{exc} (run 'apt-get update' once as root, or pass --debs FOLDER)") from None
    return sorted(folder.glob("*.deb"))


def _package_name(deb: Path) -> str:
    return deb.name.split("_")[0]


def _read_any(path: Path) -> np.ndarray:
    """An image as float RGB: OpenCV, or Pillow for formats OpenCV lacks (TGA)."""
    try:
        return read_image(path)
    except ImageReadError:
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255.0


def _patches(image: np.ndarray, settings: CorpusSettings, photo: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """A texture: one square from its centre. A photograph: up to ``photo_patches`` squares at several scales."""
    height, width = image.shape[:2]
    side = min(height, width)
    if not photo:
        top, left = (height - side) // 2, (width - side) // 2
        return [resize_image(image[top : top + side, left : left + side], settings.patch)]
    out = []
    for scale in (1 / 2, 1 / 4, 1 / 8):
        crop = int(side * scale)
        if crop < settings.patch // 2:
            continue
        for _ in range(settings.photo_patches // 3):
            top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
            out.append(resize_image(image[top : top + crop, left : left + crop], settings.patch))
    return out


def detail(patch: np.ndarray) -> float:
    """How much fine structure a patch has: the standard deviation of the Laplacian of its grey image."""
    import cv2

    grey = cv2.cvtColor(patch.astype(np.float32), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F).std())


def _unpack_archives(root: Path) -> None:
    """Game data keeps its textures in zip archives (.pk3 of Quake-engine games): unpack them in place.
    ``zipfile`` strips absolute paths and '..' from member names, so nothing lands outside ``root``."""
    import zipfile

    for archive in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".pk3", ".pk4", ".zip")):
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(archive.with_name(archive.name + ".d"))
        except zipfile.BadZipFile:
            log.debug("not a zip archive: %s", archive)


def _images_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def assemble_corpus(
    out: str | Path,
    packages: Sequence[str] | None = None,
    debs: str | Path | None = None,
    photo_folders: Sequence[str | Path] = (),
    settings: CorpusSettings | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Write ``out/images/<source>/*.png`` and ``out/manifest.csv``; returns counts per source.

    ``packages`` default: every ``.deb`` in ``debs`` when given, else the seven packages named above."""
    settings = settings or CorpusSettings()
    for folder in photo_folders:
        if not Path(folder).is_dir():
            raise DataError(f"{folder}: no such folder of photographs")
    deb_files: list[Path] = []
    if debs is not None:  # checked before an earlier corpus in ``out`` is replaced
        deb_files = [d for d in sorted(Path(debs).glob("*.deb")) if not packages or _package_name(d) in packages]
        if not deb_files:
            raise DataError(f"no .deb files{' of ' + ', '.join(packages) if packages else ''} in {debs}")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    inputs = [*photo_folders, *([debs] if debs is not None else [])]
    with tempfile.TemporaryDirectory() as work, output_folder(out, force, "corpus folder", inputs=inputs) as out:
        work = Path(work)
        if debs is None:
            deb_files = _download(packages or DEFAULT_PACKAGES, work)
        sources: list[tuple[str, Path, str, bool]] = []  # (source, root, licence, photo)
        for deb in deb_files:
            package = _package_name(deb)
            root = work / "unpacked" / package
            root.mkdir(parents=True)
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
            _unpack_archives(root)
            sources.append((package, root, _licence(root, package), is_photo_package(package)))
        sources += [(f"folder:{Path(f).name}", Path(f), "the user's own photographs", True) for f in photo_folders]
        for source, root, licence, photo in sources:
            files = [p for p in _images_of(root) if not NOT_PHOTOS.search(p.name)]
            for path in track(files, f"cutting {source}"):
                try:
                    image = _read_any(path)
                except Exception as exc:  # an odd file in a package is skipped, never fatal
                    log.debug("skipping %s: %s", path, exc)
                    continue
                if min(image.shape[:2]) < settings.min_side:
                    continue
                stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(path.relative_to(root).with_suffix("")))
                patches = [p for p in _patches(image, settings, photo, rng) if detail(p) >= settings.min_detail]
                for index, patch in enumerate(patches):
                    name = f"images/{source.replace(':', '_')}/{stem}-{index:02d}.png"
                    write_image(out / name, patch)
                    kind = "photo" if photo else "texture"
                    values = (name, kind, source, str(path.relative_to(root)), licence)
                    rows.append(dict(zip(COLUMNS, values, strict=True)))
        if not rows:
            raise DataError(
                "no usable images in the given packages and folders (photographs and photo textures with detail; "
                f"flat ones, below min_detail {settings.min_detail}, are skipped)"
            )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_text(out / "manifest.csv", buffer.getvalue())
        counts = {source: sum(r["source"] == source for r in rows) for source, *_ in sources}
        for source in (s for s, count in counts.items() if count == 0):
            log.warning("%s gave no images (a metapackage? its pictures may be in packages it depends on)", source)
        write_json(out / "corpus.json", {"images": len(rows), "per_source": counts, "patch": settings.patch})
    return counts


RESOLUTION = re.compile(r"[_-]?\d{3,5}x\d{3,5}$")


def picture_of(source_file: str) -> str:
    """The picture a file shows: wallpaper packages ship one photograph at several resolutions
    (``Name/contents/images/1920x1080.jpg``, ``Elephants_3840x2160.jpg``); those are one class, not several."""
    path = Path(source_file)
    if path.parent.name == "images" and path.parent.parent.name == "contents":
        return str(path.parent.parent.parent)
    stem = RESOLUTION.sub("", path.stem)
    return str(path.parent / stem) if stem else str(path.parent)


HOLD_OUT_EVERY = 10  # every 10th patch of a photograph cut into 4 or more is held out of pretraining


def corpus_files(corpus: str | Path, split: str, size: int | None = None, cache_mb: int = 2048) -> ImageFiles:
    """The ``train`` or held-out ``val`` images of a corpus written by :func:`assemble_corpus`, labelled by
    source file (the same label numbers in both splits), resized to ``size`` (default: the corpus's own).

    Held out: every ``HOLD_OUT_EVERY``-th patch of each source cut into at least four patches, so every held-out
    image has a class the encoder was trained on."""
    manifest = Path(corpus) / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found (assemble a corpus with 'robust-ad datasets corpus')")
    rows = list(csv.DictReader(manifest.open()))
    if not rows or set(COLUMNS) - set(rows[0]):
        raise DataError(f"{manifest}: not a manifest of 'robust-ad datasets corpus' (columns {', '.join(COLUMNS)})")
    keys = [f"{r['source']}/{picture_of(r['source_file'])}" for r in rows]
    label_of = {key: index for index, key in enumerate(dict.fromkeys(keys))}
    if len(label_of) < 2:
        raise DataError(f"{manifest}: the corpus needs images from at least two source files")
    counts = Counter(keys)
    seen: dict[str, int] = {}
    picked = []
    for row, key in zip(rows, keys, strict=True):
        seen[key] = seen.get(key, 0) + 1
        held_out = counts[key] >= 4 and seen[key] % HOLD_OUT_EVERY == 0
        if held_out == (split == "val"):
            picked.append((Path(corpus) / row["file"], label_of[key]))
    if not picked:
        raise DataError(f"{manifest}: no {split} images (held out: every {HOLD_OUT_EVERY}th patch of a photograph)")
    size = size or read_image(picked[0][0]).shape[0]
    return ImageFiles([p for p, _ in picked], size, [label for _, label in picked], cache_mb)
