"""The benchmark command runs end to end on tiny settings and writes every table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--quick", "--out", str(tmp_path), "--report", str(tmp_path / "RESULTS.md")])
    text = report.read_text()
    for section in (
        "eps sweep",
        "Detection and reconstruction",
        "Score components",
        "Losses",
        "Resolution",
        "Denoising",
        "Inference speed",
        "Machine:",
    ):
        assert section in text, section
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["eps"] for row in results["detection"]} == {0.0, 1.0}
    assert all(0 <= row["image_auroc"] <= 1 for row in results["detection"])
    assert {row["eval_size"] for row in results["resolution"]} == {32, 64}
    assert all(row["onnx_images_per_s"] > 0 for row in results["speed"])
    assert (tmp_path / "results.png").stat().st_size > 0
