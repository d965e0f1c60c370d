"""Pictures people would rather look at than numbers: reconstruction grids, heat-map overlays, denoising grids."""

from __future__ import annotations

import cv2
import numpy as np


def _rows_to_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack rows of (N, H, W, 3) images into one padded grid image."""
    n, h, w, _ = rows[0].shape
    grid = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), np.float32)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = image
    return grid


def reconstruction_grid(images: np.ndarray, reconstructions: np.ndarray, n: int = 8) -> np.ndarray:
    """Rows: inputs, reconstructions, absolute residuals (amplified 4 times)."""
    images, reconstructions = images[:n], reconstructions[:n]
    residual = np.clip(np.abs(images - reconstructions).mean(-1, keepdims=True) * 4, 0, 1).repeat(3, -1)
    return _rows_to_grid([images, reconstructions, residual])


ABOVE_VMAX = 0.25  # the top of the colour scale (orange to red) that values above vmax share


def heatmap(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """A (H, W) map as RGB jet colours in [0, 1]: 0 → blue, up to ``vmax`` (the normal maps' high end) on a fixed
    scale to yellow, above it on a log scale up to the map's own maximum → red. With one fixed scale a defect of
    1e5 normal standard deviations turned the whole map red, the defect's neighbourhood too, and showed no place."""
    raw = anomaly_map / max(vmax, 1e-12)
    ratio = np.nan_to_num(raw, nan=1.0, posinf=0.0, neginf=0.0)  # infinite: red (below), as with one fixed scale
    scaled = np.clip(ratio, 0, 1) * (1 - ABOVE_VMAX)
    top = float(ratio.max())
    if top > 1:
        scaled = np.where(ratio > 1, 1 - ABOVE_VMAX + ABOVE_VMAX * np.log(np.maximum(ratio, 1)) / np.log(top), scaled)
    scaled = np.where(np.isposinf(raw), 1.0, scaled)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmax: float, caption: str | None = None, alpha: float = 0.45
) -> np.ndarray:
    """The image with its heat map blended on top, and the heat map beside it; with a ``caption`` (e.g. the verdict
    and score), a strip above them that says it, red when it starts with 'anomalous'."""
    heat = heatmap(anomaly_map, vmax)
    blended = (1 - alpha) * image + alpha * heat
    panels = np.concatenate([image, blended, heat], axis=1)
    if caption is None:
        return panels
    colour = (255, 80, 80) if caption.startswith("anomalous") else (100, 255, 100)
    strip = _caption_strip(caption, panels.shape[1], max(14, panels.shape[0] // 10), colour)
    return np.concatenate([strip, panels], axis=0)


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _fitting_scale(caption: str, width: int, height: int) -> float:
    """The font scale of a ``height`` px strip, shrunk so that ``caption`` fits ``width`` px."""
    scale = height / 30
    text_width = cv2.getTextSize(caption, _FONT, scale, max(1, round(height / 20)))[0][0]
    return scale * min(1.0, (width - 8) / text_width)


def _caption_strip(
    caption: str, width: int, height: int, colour: tuple[int, int, int], scale: float | None = None
) -> np.ndarray:
    """A dark (height, width, 3) strip in [0, 1] with ``caption`` in ``colour`` (RGB 0-255), at the font ``scale``
    given (default: as large as fits)."""
    strip = np.full((height, width, 3), 30, np.uint8)  # OpenCV draws text on 8-bit images only
    scale = _fitting_scale(caption, width, height) if scale is None else scale
    cv2.putText(strip, caption, (4, int(height * 0.75)), _FONT, scale, colour, max(1, round(height / 20)), cv2.LINE_AA)
    return strip.astype(np.float32) / 255


def denoising_grid(clean: np.ndarray, examples: dict[str, dict[str, tuple[np.ndarray, float]]]) -> np.ndarray:
    """One row per noise setting (``examples``: its label -> method -> (restored image, PSNR in dB)), the clean
    image first; every tile captioned with its method and PSNR in one font size, the best of a row's methods in
    green."""
    factor = max(1, -(-192 // clean.shape[1]))  # small images enlarged (nearest: pixels stay pixels) to be seen
    width, strip = clean.shape[1] * factor, max(14, clean.shape[0] * factor // 10)
    grey, green = (230, 230, 230), (100, 255, 100)
    captioned = []  # per setting: (image, caption, colour) of each tile
    for setting, methods in examples.items():
        best = max((psnr for name, (_, psnr) in methods.items() if name != "noisy input"), default=None)
        tiles = [(clean, f"clean; noise: {setting}", grey)]
        tiles += [
            (image, f"{name} {psnr:.1f} dB", green if psnr == best else grey) for name, (image, psnr) in methods.items()
        ]
        captioned.append(tiles)
    scale = min(_fitting_scale(caption, width, strip) for tiles in captioned for _, caption, _ in tiles)

    def tile(image: np.ndarray, caption: str, colour: tuple[int, int, int]) -> np.ndarray:
        big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        return np.concatenate([_caption_strip(caption, width, strip, colour, scale), big])

    rows = [[tile(*parts) for parts in tiles] for tiles in captioned]
    width, blank = max(len(row) for row in rows), np.ones_like(rows[0][0])  # a method may decline a setting
    return _rows_to_grid([np.stack(row + [blank] * (width - len(row))) for row in rows])
