"""Production inference with onnxruntime only: no torch import, so a line PC needs just onnxruntime + numpy.

Picks the TensorRT and CUDA execution providers when they are usable and falls back to the CPU (a warning where a
GPU was asked for or a GPU driver is installed). Thresholds and preprocessing come from the exported file's
metadata, which is checked at load: a missing, non-numeric or non-finite number there is refused, never used.

Full camera frames go into the graph as they are: it resizes them itself, with the same resize as training
and calibration (see the ``resize`` metadata entry).
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import math
from pathlib import Path

import numpy as np

from robust_ad.errors import DataError, ModelError, gpu_index

log = logging.getLogger(__name__)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NUMERIC = {
    "threshold": float,
    "map_vmax": float,
    "score_mean": float,
    "score_std": float,
    "image_size": int,
    "eps": float,
    "train_aspect_ratio": float,
    "train_channel_spread": float,
}
_REQUIRED = {"detect": ("threshold", "map_vmax", "score_mean", "score_std", "image_size"), "denoise": ()}
ASPECT_TOLERANCE = 0.05  # relative difference of width/height from training above which a warning is given
GREY_TOLERANCE = 1.5 / 255  # the largest channel difference of a grey image (8-bit rounding): a monochrome camera's
LIGHT_TOLERANCE = 16 / 255  # how far a frame's mean colour may lie outside the training images' (8-bit levels)


def _colour_range(text: str | None, path: Path) -> list[list[float]] | None:
    """The metadata's train_colour_range ([[R, G, B] lowest, [R, G, B] highest], JSON); files of before have none."""
    if text is None:
        return None
    try:
        value = json.loads(text)
        if np.asarray(value, float).shape != (2, 3) or not np.isfinite(value).all():
            raise ValueError
    except (ValueError, TypeError):
        raise ModelError(f"{path}: metadata 'train_colour_range' {text!r} is not two finite R, G, B triples") from None
    return value


def _metadata(raw: dict[str, str], path: Path) -> dict:
    """The file's metadata with numbers parsed; refuses missing, non-numeric and non-finite ones."""
    mode = raw.get("mode", "detect")
    if mode not in _REQUIRED:
        raise ModelError(f"{path}: unknown mode '{mode}' in the metadata")
    missing = [key for key in _REQUIRED[mode] if key not in raw]
    if missing:
        raise ModelError(f"{path}: metadata lacks {', '.join(missing)} (re-export it with 'robust-ad export')")
    meta: dict = {}
    for key, value in raw.items():
        if key not in _NUMERIC:
            meta[key] = value
            continue
        try:
            number = _NUMERIC[key](value)
        except ValueError:
            raise ModelError(f"{path}: metadata '{key}' = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ModelError(f"{path}: metadata '{key}' = {value!r} is not finite")
        meta[key] = number
    if mode == "detect" and (meta["score_std"] <= 0 or meta["image_size"] < 1):
        raise ModelError(f"{path}: metadata score_std and image_size must be positive")
    return meta


class FrameCheck:
    """Warns of frames the model will not see as it was trained: once per frame size whose width/height is unlike
    the training images' (:func:`aspect_warning`) or with a side smaller than the model's processing size
    (:func:`size_warning`), and once when a frame is grey where training was colour, or the other way round
    (:func:`colour_warning`)."""

    def __init__(
        self,
        train_aspect: float | None,
        size: int | None,
        train_spread: float | None = None,
        train_colours: list[list[float]] | None = None,
    ) -> None:
        self.train_aspect, self.size, self.train_spread, self.seen = train_aspect, size, train_spread, set()
        self.train_colours = train_colours

    def __call__(self, image: np.ndarray) -> None:
        """``image`` (H, W, 3) RGB in [0, 1]. Its size is looked at once per frame size; its colour on every frame
        until one warns (a grey frame among colour ones of the same size was passed over; a pass over the pixels
        costs little beside the network)."""
        warnings = []
        if image.shape[:2] not in self.seen:
            self.seen.add(image.shape[:2])
            warnings += [aspect_warning(image.shape, self.train_aspect), size_warning(image.shape, self.size)]
        if "colour" not in self.seen and (colour := colour_warning(image, self.train_spread)):
            self.seen.add("colour")  # said once
            warnings.append(colour)
        if "light" not in self.seen and (light := brightness_warning(image, self.train_colours)):
            self.seen.add("light")
            warnings.append(light)
        for warning in filter(None, warnings):
            log.warning("%s", warning)


def colour_warning(image: np.ndarray, train_spread: float | None) -> str | None:
    """A warning when an (H, W, 3) frame is grey (its channels equal) and the training images were in colour, or
    the other way round (``train_spread``: the largest channel difference over the training images): a camera
    switched between colour and monochrome."""
    if train_spread is None:
        return None
    grey, trained_grey = float((image.max(2) - image.min(2)).max()) <= GREY_TOLERANCE, train_spread <= GREY_TOLERANCE
    if grey == trained_grey:
        return None
    frames, trained = ("grey", "colour") if grey else ("colour", "grey (monochrome)")
    return (
        f"input frames are {frames} but the model was trained on {trained} images: scores will be off; use the "
        "camera mode of the training images"
    )


def brightness_warning(image: np.ndarray, train_colours: list[list[float]] | None) -> str | None:
    """A warning when an (H, W, 3) frame's mean colour lies outside the training images' (``train_colours``: their
    lowest and highest mean R, G, B) by more than LIGHT_TOLERANCE and a quarter of their own range: a changed camera
    gain, lens or lighting, which makes every part score as anomalous with no hint why."""
    if not train_colours:
        return None
    low, high = np.asarray(train_colours[0]), np.asarray(train_colours[1])
    margin = LIGHT_TOLERANCE + (high - low) / 4
    means = image.reshape(-1, 3).mean(0)
    if ((means >= low - margin) & (means <= high + margin)).all():
        return None
    shown = "/".join(f"{v * 255:.0f}" for v in means)
    trained = "/".join(f"{a * 255:.0f}-{b * 255:.0f}" for a, b in zip(low, high, strict=True))
    return (
        f"input frames' mean colour (R/G/B {shown} of 255) is outside the training images' ({trained}): a camera, "
        "gain, lens or lighting change? Scores will be off; retrain on images of the new set-up"
    )


def aspect_warning(shape: tuple[int, ...], train_aspect: float | None) -> str | None:
    """A warning when a (H, W, ...) frame's width/height differs from the training images' by over 5 %."""
    if not train_aspect:
        return None
    aspect = shape[1] / shape[0]
    if abs(aspect / train_aspect - 1) <= ASPECT_TOLERANCE:
        return None
    return (
        f"input frames of {shape[1]}x{shape[0]} px (aspect {aspect:.2f}) differ from the training images' aspect "
        f"{train_aspect:.2f}: the square resize distorts them, so scores may rise; crop the frames like the "
        "training images"
    )


def size_warning(shape: tuple[int, ...], size: int | None) -> str | None:
    """A warning when a (H, W, ...) frame is smaller than the model's processing size on either side: enlarged,
    it holds less detail than the training images had (a wrong camera region, or a thumbnail?)."""
    if not size or min(shape[:2]) >= size:
        return None
    return (
        f"input frames of {shape[1]}x{shape[0]} px are smaller than the model's {size}x{size}: they are enlarged "
        "to be scored, so scores may rise; send the full camera frames"
    )


def choose_providers(device: str = "auto") -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers to try, best first: GPU ones for 'auto'/'cuda[:N]' when installed (on GPU N), CPU
    always last."""
    import onnxruntime as ort

    index = gpu_index(device)
    available = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in available] if device != "cpu" else []
    if "TensorrtExecutionProvider" in gpu and not ctypes.util.find_library("nvinfer"):
        gpu.remove("TensorrtExecutionProvider")  # onnxruntime-gpu lists it even where TensorRT is not installed
    if gpu and hasattr(ort, "preload_dlls"):
        try:  # CUDA / cuDNN from the nvidia-* wheels that torch or onnxruntime-gpu[cuda] installed
            ort.preload_dlls()
        except Exception as exc:  # a CPU-only machine: the CPU provider is used below
            log.debug("could not preload CUDA libraries: %s", exc)
    on_gpu = [(name, {"device_id": str(index)}) for name in gpu] if index else gpu
    return [*on_gpu, "CPUExecutionProvider"]


def _gpu_driver_installed() -> bool:
    """Whether this machine has an NVIDIA driver (its CUDA library), i.e. a GPU that onnxruntime could use."""
    return any(ctypes.util.find_library(name) for name in ("cuda", "nvcuda"))


def as_frames(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB frames as float32 in [0, 1]: uint8 and uint16 are scaled; floats must already lie in
    [0, 1]. Anything else is refused in one line (a frame in 0-255 as floats was clipped to white and scored, an
    HWC frame without its batch axis or a grey one failed deep in numpy)."""
    if isinstance(images, list | tuple) and len({np.shape(frame) for frame in images}) > 1:
        raise DataError("frames of different sizes in one batch: pass them one at a time (or use api.predict)")
    images = np.asarray(images)
    if images.ndim == 4 and 0 in images.shape[1:3]:
        raise DataError(f"frames must be at least 1 x 1 pixels, got shape {images.shape}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"frames must be (N, H, W, 3) RGB, got shape {images.shape}: one frame is frame[None], a grey one "
            "np.repeat(frame[..., None], 3, -1), an NCHW batch batch.transpose(0, 2, 3, 1)"
        )
    if images.dtype == np.uint8 or images.dtype == np.uint16:
        return images.astype(np.float32) / np.iinfo(images.dtype).max
    if images.dtype.kind != "f":
        raise DataError(f"frames must be uint8, uint16 or float in [0, 1], got {images.dtype}")
    if images.size and not np.isfinite(images).all():
        raise DataError("frames hold NaN or infinite values")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < -1e-3 or high > 1 + 1e-3:
        raise DataError(
            f"float frames must lie in [0, 1], these span {low:g} to {high:g} (8-bit values: divide by 255, or pass "
            "the uint8 array itself)"
        )
    return images.astype(np.float32, copy=False)


class InferenceSession:
    """An exported robust-ad model in onnxruntime."""

    def __init__(self, path: str | Path, device: str = "auto", require_robust_ad: bool = True) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"ONNX file {path} not found (write one with 'robust-ad export')")
        ort.set_default_logger_severity(4)  # GPU providers that cannot start are reported below, once
        providers = choose_providers(device)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a loadable ONNX model ({first})") from exc
        used = self.session.get_providers()
        if device != "cpu" and not any(p in used for p in GPU_PROVIDERS):
            # a warning where a GPU was asked for, or where one is installed (its driver) and could not be used; on
            # a machine without a GPU (device auto) the CPU is expected: said quietly
            level = logging.WARNING if device != "auto" or _gpu_driver_installed() else logging.INFO
            log.log(level, "no usable GPU execution provider: running on CPU")
        self.providers = used
        raw = dict(self.session.get_modelmeta().custom_metadata_map)
        if require_robust_ad and raw.get("format") != "robust-ad":
            raise ModelError(
                f"{path}: not a robust-ad model (no robust-ad metadata; export it with 'robust-ad export')"
            )
        self.metadata = _metadata(raw, path) if require_robust_ad else raw
        self.input = self.session.get_inputs()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        known = self.metadata if require_robust_ad else {}
        self.check_frames = FrameCheck(
            known.get("train_aspect_ratio"),
            known.get("image_size"),
            known.get("train_channel_spread"),
            _colour_range(known.get("train_colour_range"), path),
        )

    def run_raw(self, images: np.ndarray) -> list[np.ndarray]:
        """Run the graph on an (N, 3, H, W) batch in the input format the file declares."""
        return self.session.run(None, {self.input.name: images})

    def _to_input(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float RGB in [0, 1] → the file's input format, NCHW."""
        nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if self.input.type == "tensor(uint8)":
            return np.round(np.clip(nchw, 0, 1) * 255).astype(np.uint8)
        return nchw.astype(np.float32)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, H, W, 3) RGB frames, any size: float in [0, 1], or uint8 / uint16 (as cameras give them) →
        (anomaly maps, normalised scores, raw scores). See :func:`as_frames` for what is refused."""
        if self.metadata.get("mode") != "detect":
            raise ModelError("this ONNX file is a denoising model: it has no anomaly scores")
        images = as_frames(images)
        for image in images:
            self.check_frames(image)
        maps, scores = self.run_raw(self._to_input(images))[:2]
        raw = scores * self.metadata["score_std"] + self.metadata["score_mean"]
        return maps.astype(np.float32), scores.astype(np.float32), raw.astype(np.float32)

    def denoise(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) RGB images (as :meth:`predict` takes them) → clean images, same shape, float in [0, 1]."""
        (clean,) = self.run_raw(self._to_input(as_frames(images)))
        clean = clean.astype(np.float32) / (255.0 if clean.dtype == np.uint8 else 1.0)
        return clean.transpose(0, 2, 3, 1)

    def predictor(self, batch_size: int):
        """A function scoring a list of full-size frames (sizes may differ): frames of one size go through in
        batches of ``batch_size`` (fixed-batch files: their size, padded)."""
        fixed = self.input.shape[0] if isinstance(self.input.shape[0], int) else None

        def run(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            step = fixed or batch_size
            parts = []
            start = 0
            while start < len(images):
                end = start + 1
                while end < len(images) and end - start < step and images[end].shape == images[start].shape:
                    end += 1
                chunk = np.stack(images[start:end])
                pad = (fixed - len(chunk)) if fixed else 0
                if pad:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
                parts.append([a[: len(chunk) - pad] for a in self.predict(chunk)])
                start = end
            return tuple(np.concatenate(column) for column in zip(*parts, strict=True))

        return run
