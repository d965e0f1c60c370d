"""ONNX export, the torch-free runtime, and 'score --onnx'."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.data.images import read_image, resize_image
from robust_ad.errors import ModelError
from robust_ad.export import export
from robust_ad.runtime import InferenceSession
from robust_ad.scoring.inference import predict

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_file(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export(tiny_run, path)
    return path


def test_export_passes_checker_and_metadata_round_trips(onnx_file: Path, tiny_run: Path) -> None:
    proto = onnx.load(str(onnx_file))
    onnx.checker.check_model(proto)
    session = InferenceSession(onnx_file, device="cpu")
    calibration = rundir.read_json(tiny_run, rundir.CALIBRATION)
    meta = session.metadata
    assert meta["threshold"] == pytest.approx(calibration["threshold"])
    assert meta["score_mean"] == pytest.approx(calibration["score_mean"])
    assert meta["image_size"] == 32 and meta["category"] == "bottle" and meta["channel_order"] == "RGB"
    assert meta["input_format"] == "uint8" and meta["eps"] == 0.5 and meta["version"]
    assert session.output_names == ["anomaly_map", "score"]


@pytest.mark.parametrize("n", [1, 5])
def test_parity_with_torch_for_dynamic_batches(onnx_file: Path, tiny_run: Path, synth_root: Path, n: int) -> None:
    files = sorted((synth_root / "bottle" / "test").rglob("*.png"))[::4][:n]
    # line images at another size than the model's: the graph resizes them; 8-bit like the files
    images = np.stack([resize_image(read_image(f), 40) for f in files])
    images = (np.round(images * 255) / 255).astype(np.float32)
    maps, scores, raw = InferenceSession(onnx_file, device="cpu").predict(images)
    scorer = rundir.load_scorer(tiny_run)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear", align_corners=False
    )
    expected = predict(scorer, resized.permute(0, 2, 3, 1).numpy())
    assert maps.shape == (n, 32, 32) and scores.shape == (n,)
    assert np.abs(scores - expected.scores).max() <= 1e-4
    assert np.abs(maps - expected.maps).max() <= 1e-4
    assert np.abs(raw - expected.raw_scores).max() <= 1e-4


def test_fixed_batch_size_and_reconstruction_output(tiny_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    export(tiny_run, path, batch=2, size=(48, 48), uint8=False, reconstruction=True)
    session = InferenceSession(path, device="cpu")
    assert session.input.shape[0] == 2 and session.output_names[-1] == "reconstruction"
    maps, scores, _ = session.predictor(batch_size=8)(np.random.default_rng(0).random((3, 48, 48, 3), np.float32))
    assert maps.shape == (3, 48, 48) and scores.shape == (3,)


def test_fp16_export_stays_within_its_documented_bound(
    onnx_file: Path, tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad.export import PARITY_FP16

    path = tmp_path / "half.onnx"
    assert export(tiny_run, path, fp16=True)["precision"] == "fp16"  # export verifies against fp32 torch
    onnx.checker.check_model(onnx.load(str(path)))
    half = InferenceSession(path, device="cpu")
    assert half.metadata["precision"] == "fp16"
    files = sorted((synth_root / "bottle" / "test").rglob("*.png"))
    images = np.stack([resize_image(read_image(f), 32) for f in files]).astype(np.float32)
    full_maps, full_scores, _ = InferenceSession(onnx_file, device="cpu").predict(images)
    half_maps, half_scores, _ = half.predict(images)
    atol, rtol = PARITY_FP16
    assert (np.abs(half_maps - full_maps) <= atol + rtol * np.abs(full_maps)).all()
    assert (np.abs(half_scores - full_scores) <= atol + rtol * np.abs(full_scores)).all()


def test_export_refuses_overwrite_and_bad_options(onnx_file: Path, tiny_run: Path) -> None:
    from robust_ad.cli import app

    result = runner.invoke(app, ["export", "--model", str(tiny_run), "--out", str(onnx_file)])
    assert result.exit_code == 2 and "--force" in result.output
    result = runner.invoke(
        app, ["export", "--model", str(tiny_run), "--out", str(onnx_file), "--force", "--batch", "zero"]
    )
    assert result.exit_code == 2 and "--batch" in result.output


def test_corrupt_or_foreign_onnx_files_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        InferenceSession(tmp_path / "bad.onnx")
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.rand(1, 3, 8, 8),), str(foreign), dynamo=False)
    with pytest.raises(ModelError, match="not a robust-ad model"):
        InferenceSession(foreign)
    with pytest.raises(ModelError, match="not found"):
        InferenceSession(tmp_path / "missing.onnx")


def test_runtime_imports_and_runs_without_torch(onnx_file: Path) -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from robust_ad.runtime import InferenceSession\n"
        f"s = InferenceSession({str(onnx_file)!r}, device='cpu')\n"
        "maps, scores, raw = s.predict(np.zeros((2, 32, 32, 3), np.float32))\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', maps.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "ok (2, 32, 32)" in result.stdout, result.stderr


def test_score_with_onnx_gives_the_torch_scores(
    onnx_file: Path, tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad.cli import app

    folder = synth_root / "bottle" / "test" / "scratch"
    outs = {}
    for name, flag in (("torch", ["--model", str(tiny_run)]), ("onnx", ["--onnx", str(onnx_file)])):
        outs[name] = tmp_path / name
        result = runner.invoke(app, ["score", str(folder), *flag, "--out", str(outs[name])])
        assert result.exit_code == 0, result.output
    rows = {n: list(csv.DictReader((o / "scores.csv").open())) for n, o in outs.items()}
    assert [r["path"] for r in rows["torch"]] == [r["path"] for r in rows["onnx"]]
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert abs(float(a["normalized_score"]) - float(b["normalized_score"])) <= 1e-4
        assert a["verdict"] == b["verdict"]


def test_example_script_scores_a_folder(onnx_file: Path, synth_root: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "onnx_score_folder.py"),
            str(onnx_file),
            str(synth_root / "bottle" / "test" / "good"),
            "--heatmaps",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.split("\t")[2] in ("normal", "anomalous") for line in lines)
    assert len(list(tmp_path.glob("*.png"))) == 6
