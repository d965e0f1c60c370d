"""Image I/O with OpenCV. No torch here: the ONNX runtime path uses it too.

Conversion rules (documented in the README):
- 8-bit images are divided by 255, 16-bit by 65535 (a warning, once, when 16-bit values stay below 4096: 12-bit
  camera data), float images are clipped to [0, 1]; other pixel types (signed integers, 32-bit) are refused.
- Grayscale is replicated to three channels; RGBA drops its alpha channel; OpenCV's BGR becomes RGB.
- An EXIF orientation tag is applied: pixels come out as viewers show them.
- Masks: any non-zero colour pixel is a defect pixel (an alpha channel is the mask only where the colours are all
  zero); a mask resized smaller marks every pixel that any defect pixel falls in.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from robust_ad.errors import ImageReadError
from robust_ad.fileio import atomic_path

log = logging.getLogger(__name__)
SKIP_BAD_HINT = "data.skip_bad: true in the training recipe skips such files"
_WARNED: set[str] = set()  # warnings given once per process
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


def is_image_file(path: Path) -> bool:
    """An image by its name; a link whose target is gone counts too (it is then reported as unreadable, not
    passed over in silence)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    try:
        return path.is_file() or (path.is_symlink() and not path.exists())
    except OSError:  # a name too long for the system, a link loop: listed, then reported as unreadable
        return True


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def _jpeg_complete(data: bytes) -> bool:
    """Whether the JPEG has an end-of-image marker after the start of its first scan (data after it, such as a
    phone's appended video or a camera's metadata, is allowed; an embedded thumbnail's own marker, which comes
    before the scan, does not count; entropy-coded data never holds the marker)."""
    pos = 2
    while pos + 3 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, restart, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:  # the first scan
            return data.rfind(_JPEG_END) > pos
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _check_complete(data: bytes, path: Path) -> None:
    """OpenCV decodes truncated PNG/JPEG files silently (grey tail); refuse them instead."""
    if data.startswith(b"\x89PNG") and _PNG_END not in data:
        raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")
    if data.startswith(b"\xff\xd8") and not _jpeg_complete(data):
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")


def _orientation(data: bytes) -> int:
    """The EXIF orientation tag of a JPEG, PNG or WebP file (1 to 8; 1 when there is none), which OpenCV ignores
    when it keeps the bit depth (its TIFF reader applies the tag itself: 1 for TIFF)."""
    from PIL import Image

    tagged = (  # cheap tests first: most frames carry no EXIF block, and Pillow costs 0.5 ms a file to look
        (data.startswith(b"\xff\xd8") and b"Exif\x00\x00" in data[:65536])
        or (data.startswith(b"\x89PNG") and b"eXIf" in data)
        or (data[8:12] == b"WEBP" and b"EXIF" in data)
    )
    if not tagged:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            value = header.getexif().get(0x0112, 1)
    except Exception:  # a format Pillow cannot parse has no tag it could read either
        return 1
    return value if value in range(1, 9) else 1


def _oriented(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned as EXIF ``orientation`` says a viewer shows it (Pillow's ImageOps.exif_transpose)."""
    if orientation in (5, 6, 7, 8):  # the ones with a transpose
        image = image.swapaxes(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 5: (), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.ascontiguousarray(np.flip(image, flips) if flips else image)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
MAX_FILE_BYTES = 2**31 - 1  # the largest buffer cv2.imdecode takes


def read_raw(path: str | Path) -> np.ndarray:
    """Decode ``path`` as stored (dtype and channels unchanged, BGR order). Raises ImageReadError."""
    path = Path(path)
    if path.is_dir():  # a folder that could not be listed (resolve_paths gives it in place of its images)
        raise ImageReadError(f"{path}: a folder whose images cannot be listed ({_listing_error(path)})")
    try:
        if (size := path.stat().st_size) > MAX_FILE_BYTES:  # OpenCV decodes no more; reading it took twice its size
            raise ImageReadError(f"{path}: {size / 2**30:.1f} GiB is too large to decode (2 GiB at most)")
        data = path.read_bytes()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop
        raise ImageReadError(f"{path}: cannot open ({getattr(exc, 'strerror', None) or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: empty file")
    _check_complete(data, path)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. more pixels than OpenCV decodes (a gigapixel header)
        reason = str(exc).strip().splitlines()[-1][:200]
        raise ImageReadError(f"{path}: not decodable ({reason})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if image.dtype not in (np.uint8, np.uint16) and image.dtype.kind != "f":
        raise ImageReadError(
            f"{path}: {image.dtype} pixels are not supported (8- or 16-bit unsigned, or float in [0, 1]): convert "
            "the image to 16-bit unsigned"
        )
    if image.dtype.kind == "f":  # clipped, a 0-255 float image came out white; NaN scored as a defect
        if not np.isfinite(image).all():
            raise ImageReadError(f"{path}: float pixels hold NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageReadError(
                f"{path}: float pixels span {low:g} to {high:g}, not [0, 1] (save 8- or 16-bit, or scale to [0, 1])"
            )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise ImageReadError(f"{path}: {channels} channels are not supported (grey, RGB or RGBA)")
    if data[:4] in TIFF_MAGIC and "pages" not in _WARNED and (pages := cv2.imcount(str(path))) > 1:
        _WARNED.add("pages")
        log.warning("%s holds %d pages: only the first is read (save each page as an image of its own)", path, pages)
    return _oriented(image, _orientation(data))


def _listing_error(folder: Path) -> str:
    try:
        next(os.scandir(folder), None)
    except OSError as exc:
        return exc.strerror or str(exc)
    return "listing it failed"


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """A decoded image (any depth, 1/3/4 channels, BGR) as float32 RGB HxWx3 in [0, 1]."""
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        out = image.astype(np.float32) / 65535.0
        if "12-bit" not in _WARNED and 0 < image.max() < 4096:  # 12-bit camera data stored in 16-bit files
            _WARNED.add("12-bit")
            log.warning(
                "16-bit images whose values stay below 4096: if they hold 10- or 12-bit camera data, they are read "
                "as 16-bit (value / 65535) and come out nearly black; scale them to the full 16-bit range first"
            )
    else:
        out = np.clip(image.astype(np.float32), 0.0, 1.0)
    if out.ndim == 2:
        out = out[:, :, None]
    channels = out.shape[2]
    if channels == 1:
        return np.repeat(out, 3, axis=2)
    if channels == 4:
        out = out[:, :, :3]
    elif channels != 3:
        raise ImageReadError(f"unsupported number of channels: {channels}")
    return np.ascontiguousarray(out[:, :, ::-1])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 RGB HxWx3 in [0, 1]."""
    return to_float_rgb(read_raw(path))


def to_mask(raw: np.ndarray, lossy: bool = False) -> np.ndarray:
    """A decoded mask as a boolean HxW array: any non-zero colour pixel is a defect pixel (VisA's masks number
    their regions 1, 2, ...); in a ``lossy`` (JPEG) mask only pixels above half its largest value, since the
    compression's ringing around the edges made the defects 2-4 times larger. An alpha channel (grey + alpha,
    RGBA) is the mask only where the colours are all zero: an opaque background is not a defect."""
    if raw.ndim == 2:
        return _marked(raw, lossy)
    colour = raw[:, :, :3] if raw.shape[2] == 4 else raw
    mask = _marked(colour.max(axis=2), lossy)
    return mask if mask.any() or raw.shape[2] != 4 else _marked(raw[:, :, 3], lossy)


def _marked(values: np.ndarray, lossy: bool) -> np.ndarray:
    return values > (values.max() / 2 if lossy and values.size else 0)


def is_lossy(path: str | Path) -> bool:
    """Whether an image file is stored lossily (JPEG)."""
    return Path(path).suffix.lower() in (".jpg", ".jpeg", ".jpe")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a defect mask as a boolean HxW array (:func:`to_mask`)."""
    return to_mask(read_raw(path), is_lossy(path))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """``mask`` at ``size`` (height, width). Made smaller, a pixel is a defect pixel when any defect pixel falls in
    it (a thin scratch is never lost, and nothing shifts); made larger, the nearest pixel's label (centred)."""
    height, width = (size, size) if isinstance(size, int) else size
    shrinks = height <= mask.shape[0] and width <= mask.shape[1]
    interpolation = cv2.INTER_AREA if shrinks else cv2.INTER_NEAREST_EXACT
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=interpolation) > 0


def to_uint(image: np.ndarray, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Float RGB in [0, 1] as uint8/uint16 RGB."""
    scale = 65535.0 if np.dtype(dtype) == np.uint16 else 255.0
    return (np.clip(image, 0.0, 1.0) * scale + 0.5).astype(dtype)


def like_raw(rgb: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] back in the form ``raw`` was decoded in: its dtype, channel count and BGR(A)
    order (grayscale: channel mean; RGBA: the original alpha kept)."""
    if raw.ndim == 2 or raw.shape[2] == 1:
        image = rgb.mean(axis=2) if raw.ndim == 2 else rgb.mean(axis=2, keepdims=True)
    else:
        image = rgb[:, :, ::-1]
    integer = raw.dtype in (np.uint8, np.uint16)
    out = to_uint(image, raw.dtype) if integer else np.clip(image, 0, 1).astype(raw.dtype)
    if raw.ndim == 3 and raw.shape[2] == 4:
        out = np.concatenate([out, raw[:, :, 3:]], axis=2)
    return np.ascontiguousarray(out)


# JPEG at quality 100 without chroma subsampling: re-encoding a decoded JPEG costs about 0.1 dB (OpenCV's default,
# quality 95 with 4:2:0, cost 3 to 5 dB on quality-100 photographs, more than the denoiser's guard allows it to lose)
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def write_raw(path: str | Path, image: np.ndarray) -> Path:
    """Write an image already in OpenCV's order and dtype, atomically (a JPEG with :data:`JPEG_PARAMS`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        params = JPEG_PARAMS if path.suffix.lower() in (".jpg", ".jpeg", ".jpe") else []
        ok, encoded = cv2.imencode(path.suffix or ".png", image, params)
        if not ok:
            raise ImageReadError(f"{path}: OpenCV cannot encode this image format")
        tmp.write_bytes(encoded.tobytes())
    return path


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (HxWx3) or gray (HxW) image atomically; float images are taken as [0, 1] 8-bit."""
    if image.dtype not in (np.uint8, np.uint16):
        image = to_uint(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    return write_raw(path, image)
