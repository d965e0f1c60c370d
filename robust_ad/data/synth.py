"""Built-in example data: MVTec-layout categories with exact defect masks, made without any download.

- ``gravel`` (texture): crops of a real gravel photograph shipped by scikit-image (``skimage.data``),
  rotated, tinted and lit differently per image.
- ``fabric`` (texture): a procedural plain weave with varying phase, angle, thread pitch and colour.
- ``bottle`` (object): a round bottle seen from above, with varying position, size, glass colour and
  highlight direction.

Every normal image also varies in exposure, illumination gradient and sensor noise. Defect types:
scratch, hole, contamination, color, and missing (textures) / deformed (bottle).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from robust_ad.data.images import write_image
from robust_ad.errors import DataError, OverwriteError
from robust_ad.fileio import has_content, output_folder, write_json
from robust_ad.progress import track

Rng = np.random.Generator


def _gravel(rng: Rng, size: int) -> np.ndarray:
    from skimage import data as skdata

    photo = skdata.gravel().astype(np.float32) / 255.0
    side = int(photo.shape[0] * rng.uniform(0.42, 0.55))
    # Rotate a crop large enough that the rotated square has no empty corners.
    big = int(side * 1.45)
    y, x = (rng.integers(0, photo.shape[0] - big + 1) for _ in range(2))
    crop = photo[y : y + big, x : x + big]
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), rng.uniform(0, 360), 1.0)
    crop = cv2.warpAffine(crop, rot, (big, big), flags=cv2.INTER_LINEAR)
    start = (big - side) // 2
    gray = cv2.resize(crop[start : start + side, start : start + side], (size, size), cv2.INTER_AREA)
    tint = np.array([1.0, 0.93, 0.82]) * rng.uniform(0.95, 1.05, 3)
    return np.clip(gray[:, :, None] * tint, 0, 1).astype(np.float32)


def _fabric(rng: Rng, size: int) -> np.ndarray:
    pitch = size / 24 * rng.uniform(0.95, 1.05)
    theta = np.deg2rad(rng.uniform(-4, 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / pitch + rng.uniform(0, 2)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / pitch + rng.uniform(0, 2)
    warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    profile = np.where(warp_on_top, np.sin(np.pi * (u % 1)), np.sin(np.pi * (v % 1))) ** 0.6
    fibres = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 0.8)
    shade = 0.35 + 0.55 * profile + 0.04 * fibres
    colour = np.array([0.25, 0.35, 0.65]) * rng.uniform(0.92, 1.08, 3)
    return np.clip(shade[:, :, None] * colour / colour.max() * 0.9, 0, 1).astype(np.float32)


def _bottle_geometry(rng: Rng, size: int) -> tuple[float, float, float]:
    cx, cy = (size / 2 + rng.uniform(-0.03, 0.03) * size for _ in range(2))
    return cx, cy, size * 0.38 * rng.uniform(0.97, 1.03)


def _bottle(rng: Rng, size: int) -> np.ndarray:
    cx, cy, radius = _bottle_geometry(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy) / radius
    angle = np.arctan2(yy - cy, xx - cx)
    glass = np.array([0.22, 0.42, 0.18]) * rng.uniform(0.9, 1.1, 3)
    body = np.clip(1.0 - 0.5 * r**2, 0, 1)[:, :, None] * glass
    rim = np.exp(-(((r - 0.32) / 0.05) ** 2))[:, :, None] * 0.55
    opening = (r < 0.27)[:, :, None] * 0.0
    highlight_dir = rng.uniform(0, 2 * np.pi)
    highlight = np.exp(-(((r - 0.7) / 0.08) ** 2)) * np.clip(np.cos(angle - highlight_dir), 0, 1) ** 6
    image = np.where((r < 1.0)[:, :, None], body + rim + highlight[:, :, None] * 0.5, 0.08)
    image = np.where((r < 0.27)[:, :, None], 0.03 + opening, image)
    edge = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.8)
    return np.clip(edge, 0, 1).astype(np.float32)


GENERATORS: dict[str, tuple[str, Callable[[Rng, int], np.ndarray]]] = {
    "gravel": ("texture", _gravel),
    "fabric": ("texture", _fabric),
    "bottle": ("object", _bottle),
}


def _acquisition(image: np.ndarray, rng: Rng) -> np.ndarray:
    """Exposure, illumination gradient and sensor noise: the variation a line camera adds."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.12) * (xx * np.cos(direction) + yy * np.sin(direction))
    gain = rng.uniform(0.88, 1.12)
    noisy = image * (gain * gradient)[:, :, None] + rng.normal(0, rng.uniform(0.005, 0.02), image.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def _blob(rng: Rng, size: int, centre: tuple[float, float], radius: float, soft: float = 1.5) -> np.ndarray:
    """A soft-edged irregular blob (alpha in [0, 1])."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = radius * np.clip(1 + np.convolve(rng.normal(0, 0.35, 16), np.ones(3) / 3, "same"), 0.4, 1.8)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    canvas = np.zeros((size, size), np.float32)
    cv2.fillPoly(canvas, [np.round(points * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(canvas, (0, 0), soft)


def _defect_centre(rng: Rng, size: int, kind: str, geometry: tuple[float, float, float] | None) -> tuple:
    if geometry is None:
        return tuple(rng.uniform(0.2, 0.8, 2) * size)
    cx, cy, radius = geometry
    low = 0.3 if kind != "deformed" else 0.92
    r, a = radius * rng.uniform(low, 0.9 if kind != "deformed" else 0.98), rng.uniform(0, 2 * np.pi)
    return cx + r * np.cos(a), cy + r * np.sin(a)


def add_defect(
    image: np.ndarray, kind: str, rng: Rng, geometry: tuple[float, float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` into ``image``; return (image, exact boolean mask)."""
    size = image.shape[0]
    centre = _defect_centre(rng, size, kind, geometry)
    if kind == "scratch":
        length = rng.uniform(0.2, 0.4) * size
        angle = rng.uniform(0, np.pi)
        t = np.linspace(-0.5, 0.5, 12)[:, None]
        bend = rng.uniform(-0.15, 0.15) * length * (1 - (2 * t) ** 2)
        direction = np.array([np.cos(angle), np.sin(angle)])
        points = np.array(centre) + t * length * direction + bend * direction[::-1] * [-1, 1]
        alpha = np.zeros((size, size), np.float32)
        thickness = max(2, size // 128)
        cv2.polylines(alpha, [np.round(points * 4).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, 2)
        value = rng.choice([0.92, 0.05])
        out = image * (1 - alpha[:, :, None]) + value * alpha[:, :, None]
        return out, alpha > 0.3
    if kind in ("hole", "contamination", "color", "missing"):
        radius = size * {"hole": 0.045, "contamination": 0.055, "color": 0.1, "missing": 0.08}[kind]
        alpha = _blob(rng, size, centre, radius * rng.uniform(0.8, 1.25))[:, :, None]
        if kind == "hole":
            fill = 0.04 + 0.05 * cv2.GaussianBlur(alpha[:, :, 0], (0, 0), radius / 3)[:, :, None]
        elif kind == "contamination":
            colour = rng.uniform(0.1, 0.9, 3)
            speckle = rng.normal(0, 0.06, image.shape[:2])[:, :, None]
            fill = np.clip(colour + speckle, 0, 1)
            alpha = alpha * rng.uniform(0.8, 0.95)
        elif kind == "color":
            fill = np.clip(image * rng.permutation([1.45, 0.75, 0.9]), 0, 1)
        else:
            fill = cv2.GaussianBlur(image, (0, 0), size / 40) * rng.uniform(0.8, 1.2)
        out = image * (1 - alpha) + fill * alpha
        changed = np.abs(out - image).max(axis=2) > 0.02
        return out, (alpha[:, :, 0] > 0.45) & changed
    if kind == "deformed":
        # Push part of the bottle outline outwards (or dent it inwards): a local displacement field.
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        cx, cy, _ = geometry if geometry is not None else (size / 2, size / 2, 0)
        weight = _blob(rng, size, centre, size * 0.08, soft=size * 0.03)
        dx, dy = np.array(centre) - (cx, cy)
        norm = np.hypot(dx, dy) + 1e-6
        push = rng.choice([-1, 1]) * size * 0.05 * weight
        map_x = (xx - push * dx / norm).astype(np.float32)
        map_y = (yy - push * dy / norm).astype(np.float32)
        out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out, (np.abs(out - image).max(axis=2) > 0.04) & (weight > 0.05)
    raise DataError(f"unknown defect type '{kind}'")


def defect_types(category: str) -> list[str]:
    last = "deformed" if GENERATORS[category][0] == "object" else "missing"
    return ["scratch", "hole", "contamination", "color", last]


def render_normal(category: str, rng: Rng, size: int) -> tuple[np.ndarray, tuple | None]:
    """One normal image of ``category`` (before acquisition noise) and its object geometry."""
    kind, generator = GENERATORS[category]
    geometry = None
    if kind == "object":
        state = rng.bit_generator.state
        geometry = _bottle_geometry(rng, size)
        rng.bit_generator.state = state  # the generator draws the same geometry again
    return generator(rng, size), geometry


def synthesize(
    out: str | Path,
    category: str,
    size: int = 256,
    n_train: int = 150,
    n_test_good: int = 30,
    n_per_defect: int = 12,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write an MVTec-layout category under ``out/<category>`` (deterministic by ``seed``)."""
    if category not in GENERATORS:
        raise DataError(f"unknown example category '{category}' (choose from {', '.join(GENERATORS)})")
    if size < 32:
        raise DataError("example images need --size of at least 32 px")
    if n_train < 1 or min(n_test_good, n_per_defect) < 0:
        raise DataError(
            f"--n-train must be at least 1 and --n-test-good, --n-per-defect at least 0, got {n_train}, "
            f"{n_test_good}, {n_per_defect}"
        )
    target = Path(out) / category
    if has_content(target) and not (target / "synth.json").is_file():  # a real dataset: never cleared
        raise OverwriteError(f"{target} holds a dataset not written by 'datasets synth': choose another --out")
    with output_folder(target, force, "category folder") as base:
        # marked as synthetic before the first image: an interrupted run's folder can be replaced with --force
        write_json(base / "synth.json", {"category": category, "complete": False})
        jobs = [("train/good", None, i) for i in range(n_train)]
        jobs += [("test/good", None, i) for i in range(n_test_good)]
        jobs += [(f"test/{d}", d, i) for d in defect_types(category) for i in range(n_per_defect)]
        for folder, defect, index in track(jobs, f"synthesising {category}"):
            rng = np.random.default_rng([seed, zlib.crc32(f"{category}/{folder}".encode()), index])
            image, geometry = render_normal(category, rng, size)
            if defect is not None:
                image, mask = add_defect(image, defect, rng, geometry)
                write_image(base / "ground_truth" / defect / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
            write_image(base / folder / f"{index:03d}.png", _acquisition(image, rng))
        write_json(
            base / "synth.json",
            {
                "category": category,
                "kind": GENERATORS[category][0],
                "size": size,
                "seed": seed,
                "n_train": n_train,
                "n_test_good": n_test_good,
                "n_per_defect": n_per_defect,
                "defect_types": defect_types(category),
                "complete": True,
            },
        )
    return base
