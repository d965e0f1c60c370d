"""ONNX export of the whole scoring graph: image batch in, anomaly map and normalised score out.

Preprocessing (uint8 → [0, 1], resize to the model's size) is inside the graph, and everything a
pipeline needs to interpret the outputs is in the file's metadata, so robust_ad is not needed at the line.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from robust_ad import __version__, rundir
from robust_ad.data.resize import METHOD, METHOD_DOC, resize
from robust_ad.errors import ConfigError, ModelError
from robust_ad.fileio import atomic_path, check_writable, record_written
from robust_ad.models.folding import fold_batch_norms
from robust_ad.tensors import to_images, to_tensor
from robust_ad.training.noise import apply_noise

log = logging.getLogger(__name__)
# Parity of onnxruntime against the fp32 torch graph on the run's own held-out images (normal and defective,
# stored at twice the model's size so that the graph's resize is exercised): |difference| <= ATOL + RTOL * |value|
# for normalised scores and anomaly maps, both in units of normal standard deviations; verdicts must be
# identical. fp16 keeps about three significant digits: measured on the 32 px test model, up to 0.13 score units
# around usual thresholds (|score| < 5) and 0.10 at a score of 23, where it cannot change a verdict.
# A category with little normal variation divides by small spreads, and its model's own fp32 rounding is amplified
# beyond these bounds: each is widened by ROUNDING_FACTOR times how far the torch graph's outputs move when it runs
# in another memory layout (channels-last: other kernels, other rounding), on the normal images for the score.
PARITY_SCORE = {"fp32": (1e-3, 1e-5), "fp16": (0.15, 0.01)}
PARITY_MAP = {"fp32": (1e-3, 1e-5), "fp16": (0.25, 0.02)}
ROUNDING_FACTOR = 4.0
# The extra check on uniform random noise, far outside the operating range (maps reach ~1000 std there, where
# float32 rounding alone exceeds 1e-4): elementwise |a - b| <= ATOL + RTOL * |b|.
PARITY_NOISE = {"fp32": (1e-4, 1e-5), "fp16": (0.25, 0.02)}
MIN_OPSET = 12  # the scoring graph exports from 11, the denoising graph from 12 (onnxruntime refused its opset 11)


def max_opset() -> int:
    """The newest opset torch's TorchScript exporter supports (above it, it only warns and stamps the file)."""
    from torch.onnx import _constants  # no public name for it

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


class ScoringGraph(nn.Module):
    """(N, 3, H, W) RGB uint8 or float [0, 1] frames of any size → anomaly_map (N, h, w), score (N,)[, recon]."""

    def __init__(self, scorer: nn.Module, size: tuple[int, int], uint8: bool, reconstruction: bool) -> None:
        super().__init__()
        self.scorer, self.size, self.uint8, self.reconstruction = scorer, size, uint8, reconstruction
        scorer.resample_memory(size)  # every frame is resized to ``size`` first: resampled once, not per frame
        fold_batch_norms(scorer.model)  # inference only: one convolution where there were two operations

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.float() / 255.0 if self.uint8 else images
        fused, score, _, x_hat = self.scorer(resize(x, self.size))
        return (fused, score, x_hat) if self.reconstruction else (fused, score)


class DenoisingGraph(nn.Module):
    """(N, 3, H, W) noisy image → clean image (N, 3, H, W) in the input's value range, at the input's size."""

    def __init__(self, model: nn.Module, uint8: bool) -> None:
        super().__init__()
        self.model, self.uint8 = model, uint8
        fold_batch_norms(model)  # inference only, as for scoring

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if self.uint8 else images
        clean = self.model(x.to(self.model.encoder.mean.dtype)).float()  # an fp16 model takes fp16 pixels
        return (clean * 255.0).round().clamp(0, 255).to(torch.uint8) if self.uint8 else clean


def _graph(run_dir: Path, size: tuple[int, int] | None, uint8: bool, reconstruction: bool) -> tuple[nn.Module, dict]:
    config = rundir.read_config(run_dir)
    meta = {
        "format": "robust-ad",
        "version": __version__,
        "mode": config.mode,
        "category": config.category,
        "eps": config.encoder.eps,
        "backbone": config.encoder.backbone,
        "channel_order": "RGB",
        "layout": "NCHW",
        "input_format": "uint8" if uint8 else "float32 in [0, 1]",
        "value_range": "0..255 (uint8)" if uint8 else "0..1 (float32)",
        # which model this is, wherever it is copied: two exports of two runs differed only in their numbers
        "run": str(Path(run_dir).resolve()),
        "model_sha256": rundir.model_digest(run_dir),
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if config.mode == "denoise":
        if size or reconstruction:  # a denoiser's graph works at the frame's own size and has one output
            raise ConfigError("--size and --reconstruction apply to detection models, not to a denoiser")
        model = rundir.load_model(run_dir)
        guard = getattr(model, "guard", False)  # the mirror denoiser of earlier versions has none
        return DenoisingGraph(model, uint8).eval(), {**meta, "outputs": "clean", "guard": str(guard).lower()}
    calibration = rundir.read_calibration(run_dir)
    trained = config.data.image_size
    size = tuple(size) if size else (trained, trained)  # a list from the Python API compares as the tuple
    if size == (trained, trained):
        scorer, record = rundir.load_scorer(run_dir), calibration.model_dump()
        meta["calibration"] = "the run's own (calibration.json)"
    else:
        scorer, record = recalibrated(run_dir, size)
        meta["calibration"] = f"recalibrated at export at {size[0]}x{size[1]}: {record['threshold_rule']}"
        if calibration.previous_thresholds:  # a threshold chosen at the training size means nothing at this one
            log.warning(
                "the run's threshold was set by hand (%s); at %dx%d it is the calibration's rule again",
                calibration.threshold_rule,
                *size,
            )
    graph = ScoringGraph(scorer, size, uint8, reconstruction).eval()
    outputs = "anomaly_map,score" + (",reconstruction" if reconstruction else "")
    return graph, {
        **meta,
        "outputs": outputs,
        "input_size": "any H x W: the graph resizes every frame itself",
        "resize": METHOD,
        "resize_definition": f"to {size[0]}x{size[1]} (H x W) inside the graph: {METHOD_DOC}",
        "train_aspect_ratio": calibration.train_aspect_ratio,
        **(
            {}
            if calibration.train_channel_spread is None
            else {"train_channel_spread": calibration.train_channel_spread}
        ),
        **(
            {}
            if calibration.train_colour_range is None
            else {"train_colour_range": json.dumps(calibration.train_colour_range)}
        ),
        "image_size": size[0],
        "map_size": f"{size[0]},{size[1]}",
        **{key: record[key] for key in ("threshold", "map_vmax", "score_mean", "score_std")},
        "components": json.dumps(record["components"]),
    }


def recalibrated(run_dir: Path, size: tuple[int, int]) -> tuple[nn.Module, dict]:
    """The run's scorer with every statistic refit at the square processing ``size`` (the networks unchanged) on
    the run's own normal images, and its calibration record: a threshold and normalisation fitted at the training
    size do not hold at another (the maps' statistics change with the scale of the features)."""
    from torch.utils.data import DataLoader

    from robust_ad.data.arrays import load_samples
    from robust_ad.data.loading import image_files, load_split, open_dataset
    from robust_ad.errors import DataError
    from robust_ad.scoring.calibration import calibrate
    from robust_ad.scoring.scorer import AnomalyScorer

    config = rundir.read_config(run_dir)
    trained = config.data.image_size
    if size[0] != size[1]:
        raise ConfigError(
            f"--size {size[0]} {size[1]}: the model is calibrated at {trained}x{trained}; another processing size "
            "is recalibrated there, which needs a square size (frames of any shape are resized to it)"
        )
    config = config.model_copy(update={"data": config.data.model_copy(update={"image_size": size[0]})})
    try:
        dataset = open_dataset(config)
    except DataError as exc:
        raise DataError(
            f"--size {size[0]} {size[1]} recalibrates at that size on the run's normal images: {exc}"
        ) from exc
    log.info("recalibrating at %dx%d on the normal images of %s (trained at %d)", *size, dataset.root, trained)
    train_files = image_files(dataset, "train", config)  # streamed, as training calibrates: memory stays flat
    held_out = load_split(dataset, "val", config) if dataset.val else load_samples(dataset.train[:16], size[0])
    scorer = AnomalyScorer(rundir.load_model(run_dir), config.scoring, size[0])
    batches = (images for images, _ in DataLoader(train_files, config.data.batch_size))
    record = calibrate(scorer, batches, held_out.images, config.data.batch_size, held_out=bool(dataset.val))
    return scorer, record


def _sample(uint8: bool, batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if uint8:
        return torch.randint(0, 256, (batch, 3, *size), generator=generator, dtype=torch.uint8)
    return torch.rand(batch, 3, *size, generator=generator)


def export(
    run_dir: str | Path,
    out: str | Path | None = None,
    fp16: bool = False,
    opset: int = 18,
    batch: str | int = "dynamic",
    size: tuple[int, int] | int | None = None,
    uint8: bool = True,
    reconstruction: bool = False,
    verify: bool = True,
    force: bool = False,
) -> dict:
    """Write ``model.onnx`` for a run folder; returns the metadata and, when verified, the parity numbers."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "model.onnx"
    if out.suffix != ".onnx":  # also keeps --force from replacing model.pt, config.yaml or a dataset image
        raise ConfigError(f"--out must name an .onnx file, got {out}")
    data = rundir.read_config(run_dir).data_root  # a user's .onnx inside the dataset is not replaced either
    own = out.parent.resolve() == run_dir.resolve()  # its own run folder's .onnx, never another run's
    check_writable(out, force, replaces=".onnx" if own else "", inputs=[data] if data and Path(data).is_dir() else [])
    if batch != "dynamic" and (not str(batch).isdigit() or int(batch) < 1):
        raise ConfigError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    if not MIN_OPSET <= opset <= max_opset():
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {max_opset()} (what torch exports), got {opset}")
    if isinstance(size, int):  # the Python API: one side, as --size S S
        size = (size, size)
    if size is not None and (len(size) != 2 or min(size) < 16 or max(size) > 4096):
        raise ConfigError(f"--size must be two sides between 16 and 4096 pixels, got {' '.join(map(str, size))}")
    graph, meta = _graph(run_dir, size, uint8, reconstruction)
    reference = graph
    if fp16:  # the networks in half precision; preprocessing and scoring arithmetic stay float32
        reference = copy.deepcopy(graph)
        (graph.scorer.model if meta["mode"] == "detect" else graph.model).half()
    example_size = size or (meta.get("image_size", 64),) * 2
    example = _sample(uint8, 2 if batch == "dynamic" else int(batch), example_size)
    names = meta["outputs"].split(",")
    dynamic = {0: "batch"} if batch == "dynamic" else {}
    axes = {"images": {**dynamic, 2: "height", 3: "width"}, **{name: dict(dynamic) for name in names}}
    if meta["mode"] == "denoise":
        axes["clean"] = {**dynamic, 2: "height", 3: "width"}
    meta.update({"precision": "fp16" if fp16 else "fp32", "batch": str(batch)})
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=names,
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
        )
        if verify:
            meta.update(verify_parity(reference, tmp, run_dir, meta, example_size, batch, fp16))
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    if own:  # in its run folder: robust-ad's own, for train --force (in another's it stays a file of the user's)
        record_written(out)
    return {**meta, "path": str(out)}  # where it went (not in the file's own metadata)


def _chunks(x: torch.Tensor, batch: str | int) -> Iterator[tuple[torch.Tensor, int]]:
    """Batches the file accepts (a fixed-batch file: exactly its size, the last one padded), with their fill."""
    step = 4 if batch == "dynamic" else int(batch)
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if batch != "dynamic" and n < step:
            chunk = torch.cat([chunk, chunk[-1:].expand(step - n, *chunk.shape[1:])])
        yield chunk, n


def _outputs(graph: nn.Module, session, x: torch.Tensor, batch: str | int) -> tuple[list[np.ndarray], ...]:
    """Every output of the torch graph and of onnxruntime on ``x``, as float32 arrays."""
    want: list[list[np.ndarray]] = []
    have: list[list[np.ndarray]] = []
    for chunk, n in _chunks(x, batch):
        with torch.no_grad():
            expected = graph(chunk)
        expected = expected if isinstance(expected, tuple) else (expected,)
        want.append([e[:n].float().numpy() for e in expected])
        have.append([h[:n].astype(np.float32) for h in session.run_raw(chunk.numpy())])
    return tuple([np.concatenate(column) for column in zip(*rows, strict=True)] for rows in (want, have))


def _as_input(images: np.ndarray, uint8: bool) -> torch.Tensor:
    """(N, H, W, 3) uint8 images → the graph's input: (N, 3, H, W) uint8, or float in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x if uint8 else x.float() / 255.0


def _with_noise(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 images with Gaussian noise of sigma 25 grey levels, always the same."""
    clean = to_tensor((images / 255.0).astype(np.float32))
    noisy = to_images(apply_noise(clean, "gaussian", 25 / 255, torch.Generator().manual_seed(0)))
    return np.round(noisy * 255).astype(np.uint8)


def _refuse(what: str) -> ModelError:
    return ModelError(f"ONNX parity check failed: {what}; the file was not written (--no-verify keeps it anyway)")


def _check_real_images(
    graph: nn.Module, session, run_dir: Path, uint8: bool, batch: str | int, precision: str, meta: dict
) -> dict:
    """Parity on the run's own held-out images, in the units that decide verdicts."""
    samples = rundir.read_verification(run_dir)
    normal = samples["normal"]
    images = np.concatenate([normal, samples["defect"]])
    if meta["mode"] == "denoise":  # with noise: clean images pass the guard unchanged and would test nothing
        images = _with_noise(images)
    given = _as_input(images, uint8)
    want, have = _outputs(graph, session, given, batch)
    if meta["mode"] == "denoise":  # clean images: grey levels (uint8) or [0, 1] values
        bound = {"fp32": 1.0, "fp16": 3.0}[precision] / (1.0 if uint8 else 255.0)
        diff = float(np.abs(want[0] - have[0]).max())
        if diff > bound:
            raise _refuse(
                f"max |image difference| {diff:.3g} on {len(images)} noisy held-out images exceeds {bound:.3g}"
            )
        changed = float((want[0] != given.numpy()).mean())  # the share of pixels the network changed there
        return {"parity_images": len(images), "parity_image_max_diff": diff, "parity_pixels_changed": changed}
    rounding = _rounding(graph, given, want, batch)
    problems = [
        problem
        for problem in (
            _exceeds("the normalised score", want[1], have[1], PARITY_SCORE[precision], rounding[1][: len(normal)]),
            _exceeds("the anomaly map", want[0], have[0], PARITY_MAP[precision], rounding[0]),
        )
        if problem
    ]
    flipped = int(((want[1] > meta["threshold"]) != (have[1] > meta["threshold"])).sum())
    if flipped:
        problems.append(f"{flipped} verdicts differ (scores within the {precision} error of the threshold)")
    if problems:
        raise _refuse(f"{', '.join(problems)} on {len(images)} held-out images of the run ({precision})")
    return {
        "parity_images": len(images),
        "parity_score_max_diff": float(np.abs(want[1] - have[1]).max()),
        "parity_map_max_diff": float(np.abs(want[0] - have[0]).max()),
        "parity_verdicts_identical": True,
    }


def _rounding(graph: nn.Module, x: torch.Tensor, want: list[np.ndarray], batch: str | int) -> list[np.ndarray]:
    """Per output, |the torch graph's output - the same graph's in channels-last|: the model's own rounding."""
    twin = copy.deepcopy(graph).to(memory_format=torch.channels_last)
    moved: list[list[np.ndarray]] = []
    for chunk, n in _chunks(x.contiguous(memory_format=torch.channels_last), batch):
        with torch.no_grad():
            moved.append([out[:n].float().numpy() for out in twin(chunk)])
    return [np.abs(np.concatenate(column) - w) for column, w in zip(zip(*moved, strict=True), want, strict=True)]


def _exceeds(
    name: str, expected: np.ndarray, got: np.ndarray, bound: tuple[float, float], rounding: np.ndarray | None = None
) -> str | None:
    """What is wrong when some |expected - got| exceeds ATOL + RTOL * |expected| (the worst place), widened by
    ROUNDING_FACTOR times the largest of ``rounding`` (the model's own rounding), else None."""
    atol, rtol = bound
    if rounding is not None and rounding.size:
        atol += ROUNDING_FACTOR * float(rounding.max())
    diff = np.abs(expected - got)
    index = int((diff - rtol * np.abs(expected)).argmax())
    worst, value = float(diff.flat[index]), float(expected.flat[index])
    if worst <= atol + rtol * abs(value):
        return None
    return f"{name} differs by {worst:.2e} at {value:.3g}, over {atol:.0e} + {rtol:.0e} * |value|"


def _check_noise(graph: nn.Module, session, uint8: bool, size: tuple[int, int], batch: str | int, precision: str):
    """The extra check on uniform noise at the processing size: every output, relative bound."""
    want, have = _outputs(graph, session, _sample(uint8, 3, size, seed=1), batch)
    worst = 0.0
    for name, expected, got in zip(session.output_names, want, have, strict=True):
        bound = PARITY_NOISE[precision]
        if name == "clean" and uint8:  # uint8 images: one grey level of rounding (fp16: a few)
            bound = (3.0 if precision == "fp16" else 1.0), 0.0
        problem = _exceeds(f"on uniform noise, '{name}'", expected, got, bound)
        if problem:
            raise _refuse(problem)
        worst = max(worst, float(np.abs(expected - got).max()))
    return worst


def verify_parity(
    graph: nn.Module, path: Path, run_dir: Path, meta: dict, size: tuple[int, int], batch: str | int, fp16: bool
) -> dict:
    """onnxruntime against the fp32 torch graph: on the run's held-out images (the bound that matters), then on
    uniform noise (an extra). Raises ModelError with the numbers when a bound is exceeded."""
    from robust_ad.runtime import InferenceSession

    session = InferenceSession(path, device="cpu", require_robust_ad=False)
    precision = "fp16" if fp16 else "fp32"
    uint8 = meta["input_format"] == "uint8"
    report = _check_real_images(graph, session, run_dir, uint8, batch, precision, meta)
    report["parity_noise_max_diff"] = _check_noise(graph, session, uint8, size, batch, precision)
    log.info(
        "parity with torch: %s",
        ", ".join(
            f"{k.removeprefix('parity_')} {v if isinstance(v, bool | int) else f'{v:.2g}'}" for k, v in report.items()
        ),
    )
    return report
