"""CUDA end to end. Skipped on machines without a GPU (CI); run on one with `pytest -m cuda`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.cli import app
from robust_ad.config import COMPONENTS, ScoringConfig
from robust_ad.data.images import read_image
from robust_ad.data.resize import resize_image
from robust_ad.data.torchdata import ArrayImages
from robust_ad.errors import ConfigError
from robust_ad.scoring.inference import predict
from robust_ad.training import engine
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
runner = CliRunner()
# CUDA against CPU scores of one model, in normal-std units: calibration and scoring run without TF32, so only
# the order of float32 sums differs.
CPU_CUDA_SCORE_BOUND = 1e-3


def _test_images(synth_root: Path) -> np.ndarray:
    files = sorted((synth_root / "bottle" / "test").rglob("*.png"))
    return np.stack([resize_image(read_image(f), 32) for f in files])


def test_cuda_train_eval_export_score(synth_root: Path, tmp_path: Path) -> None:
    """Trained, evaluated, exported and scored on CUDA with every score component on (colour, off by default,
    included); the CUDA scores are the CPU's."""
    from robust_ad.api import train
    from robust_ad.runtime import InferenceSession

    weights = {**ScoringConfig().weights, "colour": 1.0}
    config = tiny_config(synth_root, device="cuda", scoring={"weights": weights})
    run = train(config, tmp_path / "run")
    assert set(rundir.load_scorer(run, "cpu").components) == set(COMPONENTS)
    assert (run / rundir.MODEL).is_file() and (run / rundir.CALIBRATION).is_file()
    assert "cuda" in (run / rundir.TRAINING).read_text()
    args = ["--model", str(run), "--device", "cuda"]
    assert runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "eval")]).exit_code == 0
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0
    test = str(synth_root / "bottle" / "test")
    result = runner.invoke(app, ["score", test, *args, "--out", str(tmp_path / "torch")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["score", test, "--onnx", str(run / "model.onnx"), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    maps, scores, _ = InferenceSession(run / "model.onnx", device="cpu").predict(_test_images(synth_root))
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    _assert_cpu_and_cuda_agree(run, synth_root)


def test_cuda_and_cpu_scores_agree(tiny_run: Path, synth_root: Path) -> None:
    _assert_cpu_and_cuda_agree(tiny_run, synth_root)


def _assert_cpu_and_cuda_agree(run: Path, synth_root: Path) -> None:
    images = _test_images(synth_root)
    cpu = predict(rundir.load_scorer(run, "cpu"), images)
    cuda = predict(rundir.load_scorer(run, "cuda"), images)
    assert np.abs(cpu.scores - cuda.scores).max() <= CPU_CUDA_SCORE_BOUND
    assert np.abs(cpu.maps - cuda.maps).max() <= 10 * CPU_CUDA_SCORE_BOUND


def test_cuda_scoring_replays_one_captured_graph_for_every_batch(tiny_run: Path, synth_root: Path) -> None:
    """predict on CUDA replays a CUDA graph: the last, partial batch is padded to the captured shape, a second
    call captures nothing new, and the scores are the eager ones."""
    from robust_ad.device import full_float32
    from robust_ad.scoring.inference import replayed
    from robust_ad.tensors import to_tensor

    images = _test_images(synth_root)[:7]  # batches of 3, 3 and 1
    scorer = rundir.load_scorer(tiny_run, "cuda")
    first = predict(scorer, images, batch_size=3)
    again = predict(scorer, images, batch_size=3)
    assert not replayed(scorer).failed and len(replayed(scorer).graphs) == 1
    np.testing.assert_array_equal(first.scores, again.scores)
    with torch.no_grad(), full_float32():
        maps, scores, _, _ = scorer(to_tensor(images).cuda())
    assert np.abs(first.scores - scores.cpu().numpy()).max() <= CPU_CUDA_SCORE_BOUND
    assert np.abs(first.maps - maps.cpu().numpy()).max() <= 10 * CPU_CUDA_SCORE_BOUND


def test_cuda_scoring_captures_again_after_a_recalibration(tiny_run: Path, synth_root: Path) -> None:
    """load_memory gives the scorer a new memory bank: the graph captured before read the freed one."""
    from robust_ad.scoring.inference import replayed

    images = _test_images(synth_root)[:4]
    scorer, fresh = rundir.load_scorer(tiny_run, "cuda"), rundir.load_scorer(tiny_run, "cuda")
    predict(scorer, images)
    statistics = {name: value * 1.5 for name, value in scorer.memory_statistics().items()}
    statistics["memory_bank"] = statistics["memory_bank"][: len(statistics["memory_bank"]) // 2]
    for target in (scorer, fresh):
        target.load_memory(statistics)
    np.testing.assert_allclose(predict(scorer, images).scores, predict(fresh, images).scores, atol=1e-5)
    assert len(replayed(scorer).graphs) == 1


def test_cuda_encoder_training_and_denoising(synth_root: Path, tmp_path: Path) -> None:
    from robust_ad.api import train

    out = tmp_path / "enc.pt"
    args = ["encoder", "train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(out)]
    result = runner.invoke(app, [*args, "--epochs", "1", "--image-size", "32", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "encoder",
            "eval",
            "--encoder",
            str(out),
            "--category",
            "bottle",
            "--data-root",
            str(synth_root),
            "--device",
            "cuda",
            "--steps",
            "2",
            "--restarts",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    run = train(tiny_config(synth_root, mode="denoise", device="cuda"), tmp_path / "denoise")
    clean = tmp_path / "clean"
    result = runner.invoke(
        app,
        [
            "denoise",
            str(synth_root / "bottle" / "test" / "good"),
            "--model",
            str(run),
            "--out",
            str(clean),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code == 0 and len(list(clean.glob("*.png"))) == 6, result.output


def test_data_too_large_for_the_device_is_refused_before_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 2000))
    task = engine.Task()
    task.modules, task.optimizers = {}, {}
    run = engine.Engine(task, ArrayImages(np.zeros((10, 32, 32, 3), np.float32)), 1, 4, device="cuda", on_device=True)
    with pytest.raises(ConfigError, match=r"data.on_device: 10 training images of \(3, 32, 32\) take 0.0 GiB"):
        run.fit()
