"""ONNX export of the whole scoring graph: image batch in, anomaly map and normalised score out.

Preprocessing (uint8 → [0, 1], resize to the model's size) is inside the graph, and everything a
pipeline needs to interpret the outputs is in the file's metadata, so robust_ad is not needed at the line.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from robust_ad import __version__, rundir
from robust_ad.errors import ConfigError, ModelError
from robust_ad.fileio import atomic_path, check_writable

log = logging.getLogger(__name__)
# onnxruntime vs torch, elementwise |a - b| <= ATOL + RTOL * |b|. Within the operating range of the
# standardised maps (|value| below ~100 normal std) this is the 1e-4 absolute bound; far outside it
# (white noise scores ~1000 std) float32 rounding alone exceeds 1e-4, hence the relative term: about a
# hundred float32 ulps, what convolution sums accumulate.
PARITY_FP32 = (1e-4, 1e-5)
# fp16 networks against the fp32 torch model: half precision keeps about three significant digits, and
# the standardised maps amplify the reconstruction's rounding; measured on the example data.
PARITY_FP16 = (0.25, 0.02)


class ScoringGraph(nn.Module):
    """(N, 3, H, W) RGB uint8 or float [0, 1] → anomaly_map (N, h, w), score (N,)[, reconstruction]."""

    def __init__(self, scorer: nn.Module, size: tuple[int, int], uint8: bool, reconstruction: bool) -> None:
        super().__init__()
        self.scorer, self.size, self.uint8, self.reconstruction = scorer, size, uint8, reconstruction

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.float() / 255.0 if self.uint8 else images
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)
        fused, score, _, x_hat = self.scorer(x)
        return (fused, score, x_hat) if self.reconstruction else (fused, score)


class DenoisingGraph(nn.Module):
    """(N, 3, H, W) noisy image → clean image (N, 3, H, W) in the input's value range, at the input's size."""

    def __init__(self, model: nn.Module, uint8: bool) -> None:
        super().__init__()
        self.model, self.uint8 = model, uint8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if self.uint8 else images
        clean = self.model(x)
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
    }
    if config.mode == "denoise":
        return DenoisingGraph(rundir.load_model(run_dir), uint8).eval(), {**meta, "outputs": "clean"}
    calibration = rundir.read_json(run_dir, rundir.CALIBRATION)
    size = size or (config.data.image_size, config.data.image_size)
    graph = ScoringGraph(rundir.load_scorer(run_dir), size, uint8, reconstruction).eval()
    outputs = "anomaly_map,score" + (",reconstruction" if reconstruction else "")
    return graph, {
        **meta,
        "outputs": outputs,
        "image_size": size[0],
        "map_size": f"{size[0]},{size[1]}",
        "threshold": calibration["threshold"],
        "map_vmax": calibration["map_vmax"],
        "score_mean": calibration["score_mean"],
        "score_std": calibration["score_std"],
        "components": json.dumps(calibration["components"]),
    }


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
    size: tuple[int, int] | None = None,
    uint8: bool = True,
    reconstruction: bool = False,
    verify: bool = True,
    force: bool = False,
) -> dict:
    """Write ``model.onnx`` for a run folder; returns the metadata and, when verified, the parity numbers."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "model.onnx"
    check_writable(out, force)
    if batch != "dynamic" and (not str(batch).isdigit() or int(batch) < 1):
        raise ConfigError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
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
        proto = onnx.load(str(tmp))
        meta.update({"precision": "fp16" if fp16 else "fp32", "batch": str(batch)})
        onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if verify:
            meta["parity_max_abs_diff"] = verify_parity(reference, tmp, uint8, example_size, batch, fp16)
    return meta


def verify_parity(
    graph: nn.Module, path: Path, uint8: bool, size: tuple[int, int], batch: str | int, fp16: bool = False
) -> float:
    """Max |onnxruntime - torch fp32| over the outputs on fresh inputs; raises when above the documented bound."""
    from robust_ad.runtime import InferenceSession

    session = InferenceSession(path, device="cpu", require_robust_ad=False)
    n = 3 if batch == "dynamic" else int(batch)
    images = _sample(uint8, n, size, seed=1)
    with torch.no_grad():
        expected = graph(images)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run_raw(images.numpy())
    worst = 0.0
    for name, want, have in zip(session.output_names, expected, got, strict=True):
        atol, rtol = PARITY_FP16 if fp16 else PARITY_FP32
        if want.dtype == torch.uint8:  # uint8 images: one grey level of rounding (fp16: a few)
            atol, rtol = (3.0 if fp16 else 1.0), 0.0
        want = want.float().numpy()
        diff = np.abs(want - have.astype(np.float32))
        excess = diff - (atol + rtol * np.abs(want))
        if excess.max() > 0:
            raise ModelError(
                f"ONNX parity check failed on '{name}': |difference| {diff.flat[excess.argmax()]:.2e} at value "
                f"{want.flat[excess.argmax()]:.3g} exceeds {atol:.0e} + {rtol:.0e} * |value| "
                "(pass --no-verify to keep the file anyway)"
            )
        worst = max(worst, float(diff.max()))
    log.info("parity: max |onnxruntime - torch| = %.2e", worst)
    return worst
