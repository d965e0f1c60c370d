"""The main job on built-in example data: generate → check → train → eval → score → export → ONNX score."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from robust_ad import api
from robust_ad.config import load_config
from robust_ad.data import AnomalyDataset
from robust_ad.data.check import check_dataset
from robust_ad.data.synth import synthesize
from robust_ad.errors import DataError
from robust_ad.fileio import output_folder

log = logging.getLogger(__name__)


def run_demo(
    out: str | Path = "demo", category: str = "bottle", quick: bool = False, force: bool = False, device: str = "auto"
) -> dict:
    """Run every step on a generated category under ``out``; returns the evaluation metrics and timings."""
    with output_folder(out, force, "demo folder") as out:
        began = time.perf_counter()
        sizes = {"size": 96, "n_train": 48, "n_test_good": 10, "n_per_defect": 4} if quick else {}
        data_root = out / "data"
        log.info("1/6 generating the example category '%s'", category)
        synthesize(data_root, category, seed=0, **sizes)
        report = check_dataset(AnomalyDataset.load(data_root, category))
        if not report.usable:
            raise DataError(report.reason())
        overrides = {"category": category, "data_root": str(data_root), "device": device}
        if quick:
            overrides.update({"data": {"image_size": 64}, "encoder": {"epochs": 1}, "autoencoder": {"epochs": 3}})
        log.info("2/6 training (decoder on the shipped robust encoder, then calibration)")
        run_dir = api.train(load_config("synthetic", overrides), out / "runs" / category)
        log.info("3/6 evaluating on the test split")
        metrics = api.evaluate(run_dir, device=device)
        log.info("4/6 scoring the test images")
        scored = api.score([data_root / category / "test"], run_dir, out / "results", device=device)
        log.info("5/6 exporting to ONNX (with a parity check against torch)")
        onnx_path = run_dir / "model.onnx"
        api.export(run_dir, onnx_path)
        log.info("6/6 scoring again with onnxruntime only")
        onnx_scored = api.score([data_root / category / "test"], out=out / "results-onnx", onnx=onnx_path)
        agree = sum(a["verdict"] == b["verdict"] for a, b in zip(scored.rows, onnx_scored.rows, strict=True))
    return {
        "metrics": metrics,
        "run_dir": str(run_dir),
        "results": str(out / "results"),
        "onnx": str(onnx_path),
        "scored": len(scored.rows),
        "anomalous": scored.n_anomalous,
        "onnx_agreement": agree / len(scored.rows),
        "minutes": (time.perf_counter() - began) / 60,
    }
