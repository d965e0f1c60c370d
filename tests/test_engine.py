"""The training engine: exact resume, mixed precision, workers, bounded memory; the threshold command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.cli import app
from robust_ad.config import EncoderConfig
from robust_ad.data.images import write_image
from robust_ad.data.torchdata import ArrayImages, ImageFiles
from robust_ad.errors import ConfigError
from robust_ad.fileio import LOCK_NAME
from robust_ad.training import engine
from robust_ad.training.autoencoder import fit_decoder
from robust_ad.training.build import build_autoencoder
from robust_ad.training.encoder import train_encoder
from tests.conftest import tiny_config, tiny_recipe

runner = CliRunner()
TINY = {"width": 0.125, "layer": "layer2", "feature_layers": ["layer1"], "batch_size": 8}


def _images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Three epochs straight, or one epoch, a stop, then two more: the same model and history."""
    images = _images()
    straight = train_encoder(images, EncoderConfig(**TINY, eps=0.5, epochs=3), seed=1)
    path = tmp_path / "enc.pt"
    train_encoder(images, EncoderConfig(**TINY, eps=0.5, epochs=1), seed=1, checkpoint_path=path)
    resumed = train_encoder(images, EncoderConfig(**TINY, eps=0.5, epochs=3), seed=1, checkpoint_path=path, resume=True)
    for a, b in zip(straight.classifier.state_dict().values(), resumed.classifier.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert [row["loss"] for row in straight.history] == pytest.approx([row["loss"] for row in resumed.history])


def test_the_encoder_learning_rate_decays_over_the_epochs_with_a_cosine_schedule() -> None:
    history = train_encoder(_images(8), EncoderConfig(**TINY, eps=0.5, epochs=3, lr=0.01, lr_schedule="cosine")).history
    assert [row["lr"] for row in history] == pytest.approx([0.01, 0.0075, 0.0025])


def test_crops_are_made_on_the_batch_within_each_image() -> None:
    """Engine crops: each a square of half to all of its image's side, resized to the asked size."""
    ramp = torch.arange(64, dtype=torch.float32)
    coordinates = torch.stack([ramp[:, None].expand(64, 64), ramp[None, :].expand(64, 64), torch.zeros(64, 64)])
    task = engine.Task()
    task.modules, task.optimizers = {}, {}
    run = engine.Engine(task, ArrayImages(np.zeros((1, 8, 8, 3), np.float32)), 1, 8, flip=False, crop=16)
    crops = run.augment(coordinates.repeat(200, 1, 1, 1))  # each pixel: the (mean) source row and column
    assert crops.shape == (200, 3, 16, 16) and crops.min() >= 0 and crops.max() <= 63
    rows, cols = crops[:, 0, -1, 0] - crops[:, 0, 0, 0], crops[:, 1, 0, -1] - crops[:, 1, 0, 0]
    torch.testing.assert_close(rows, cols)  # square
    sides = rows * 16 / 15  # the first and last output pixels are 15/16 of a side apart
    assert sides.min() >= 31 and sides.max() <= 64 and sides.max() - sides.min() > 24  # half to all, varied
    wide = run.augment(coordinates[:, :32].repeat(200, 1, 1, 1))  # 32 x 64: squares of the shorter side's share
    spans = (wide[:, 1, 0, -1] - wide[:, 1, 0, 0]) * 16 / 15
    assert spans.max() <= 32 and wide[:, 0].max() <= 31 and wide[:, 1].max() > 48  # anywhere across the width


def test_rotation_shows_each_image_in_all_eight_symmetries_of_the_square_and_no_other() -> None:
    """rotate (with flip): every flip and quarter turn of a square image, about equally often; a non-square image
    is flipped but never transposed."""
    task = engine.Task()
    task.modules, task.optimizers = {}, {}
    run = engine.Engine(task, ArrayImages(np.zeros((1, 8, 8, 3), np.float32)), 1, 8, rotate=True)
    image = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)  # no symmetry of its own
    symmetries = [torch.rot90(turned, k, (-2, -1)) for turned in (image, image.flip(-1)) for k in range(4)]
    seen = run.augment(image.repeat(800, 1, 1, 1))
    counts = [int((seen == s).flatten(1).all(1).sum()) for s in symmetries]
    assert sum(counts) == 800 and min(counts) > 60, counts
    wide = run.augment(torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3).repeat(200, 1, 1, 1))
    assert wide.shape == (200, 1, 2, 3)
    assert len({tuple(x.flatten().tolist()) for x in wide}) == 4  # as is, flipped either way, or both
    plain = engine.Engine(task, ArrayImages(np.zeros((1, 8, 8, 3), np.float32)), 1, 8)
    assert len({tuple(x.flatten().tolist()) for x in plain.augment(image.repeat(200, 1, 1, 1))}) == 2


class _Recorder(engine.Task):
    """Trains nothing; keeps every batch it is given."""

    def __init__(self) -> None:
        self.modules, self.optimizers, self.seen = {}, {}, []

    def step(self, batch: engine.Batch, run: engine.Engine) -> dict[str, torch.Tensor]:
        self.seen.append((batch.images.clone(), batch.labels.clone()))
        return {}


def test_data_kept_on_the_device_gives_every_image_once_an_epoch_exactly() -> None:
    """on_device: the training set read once into 8-bit images; each epoch a new order of all of them."""
    images = (np.round(_images(10) * 255) / 255).astype(np.float32)  # 8-bit values, as read from files
    recorder = _Recorder()
    run = engine.Engine(recorder, ArrayImages(images, np.arange(10)), 3, 4, flip=False, on_device=True)
    run.fit()
    assert run._resident is not None and run._resident[0].dtype == torch.uint8
    assert len(recorder.seen) == 9  # 3 epochs of batches of 4, 4 and 2
    orders = []
    for epoch in range(3):
        batches = recorder.seen[3 * epoch : 3 * epoch + 3]
        labels = torch.cat([labels for _, labels in batches])
        assert sorted(labels.tolist()) == list(range(10))
        torch.testing.assert_close(
            torch.cat([x for x, _ in batches]).permute(0, 2, 3, 1), torch.from_numpy(images)[labels]
        )
        orders.append(labels.tolist())
    assert orders[0] != orders[1] != orders[2]
    in_order = list(run.loader())  # end-of-epoch work: the same images, in order, from the device
    assert torch.cat([labels for _, labels in in_order]).tolist() == list(range(10))
    torch.testing.assert_close(torch.cat([x for x, _ in in_order]).permute(0, 2, 3, 1), torch.from_numpy(images))


def test_data_too_large_for_the_host_is_refused_before_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "free_memory", lambda device: 1000)
    run = engine.Engine(_Recorder(), ArrayImages(_images(10)), 1, 4, on_device=True)
    with pytest.raises(
        ConfigError, match=r"data.on_device: 10 training images of \(3, 32, 32\) take 0.0 GiB .* on cpu"
    ):
        run.fit()
    assert run._resident is None


def test_bf16_training_runs_and_learns(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, autoencoder={"epochs": 4, "w_gan": 0.0})
    history = fit_decoder(build_autoencoder(config), config.autoencoder, _images(), precision="bf16")
    assert history[-1]["train_total"] < history[0]["train_total"]


@pytest.mark.slow
def test_a_compiled_training_learns_like_the_eager_one(tmp_path: Path) -> None:
    """recipe 'compile: true' (or --compile) runs the training step through torch.compile."""
    config = tiny_config(tmp_path, autoencoder={"epochs": 2, "w_gan": 0.0})
    histories = []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = build_autoencoder(config)
        histories.append(fit_decoder(model, config.autoencoder, _images(), compile=compile_))
    eager, compiled = histories
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the step did run through torch.compile
    assert compiled[-1]["train_total"] < compiled[0]["train_total"]
    assert compiled[-1]["train_total"] == pytest.approx(eager[-1]["train_total"], rel=0.02)


def test_train_takes_the_precision_from_the_command_line_and_records_it(synth_root: Path, tmp_path: Path) -> None:
    args = ["train", "--recipe", str(tiny_recipe(tmp_path)), "--category", "bottle", "--data-root", str(synth_root)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / rundir.TRAINING).read_text())["precision"] == "bf16"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--precision", "fp8"])
    assert result.exit_code == 2 and "precision = 'fp8' is not valid" in result.output, result.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it_in_hardware(
    native: bool, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "native_bf16_cpu", lambda: native)
    assert engine.effective_precision("auto", torch.device("cuda")) == "fp32"  # bf16 did not pay on a GPU
    args = ["train", "--recipe", str(tiny_recipe(tmp_path)), "--category", "bottle", "--data-root", str(synth_root)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--device", "cpu", "--precision", "auto"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / rundir.TRAINING).read_text())["precision"]
    assert recorded == ("bf16" if native else "fp32")


def test_data_loader_workers_give_the_same_training(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    paths = [write_image(folder / f"{i}.png", image) for i, image in enumerate(_images(8))]
    config = tiny_config(tmp_path, autoencoder={"epochs": 1, "w_gan": 0.0})
    runs = []
    for workers in (0, 2):
        files = ImageFiles(paths, 32, cache_mb=0).verify()
        torch.manual_seed(0)
        runs.append(fit_decoder(build_autoencoder(config), config.autoencoder, files, batch_size=4, workers=workers))
    assert runs[0][0]["train_total"] == pytest.approx(runs[1][0]["train_total"], rel=1e-5)


def test_image_files_keep_memory_within_the_cache_budget(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((30, 64, 64, 3), dtype=np.float32)
    paths = [write_image(tmp_path / f"{i}.png", image) for i, image in enumerate(images)]
    files = ImageFiles(paths, 64, cache_mb=1).verify()
    cached = sum(t.numel() * t.element_size() for t in files._cache.values())
    assert len(files) == 30 and 0 < cached <= 2**20 < 30 * 3 * 64 * 64 * 4  # 1 MB holds 21 of the 30
    np.testing.assert_allclose(files[29][0].permute(1, 2, 0).numpy(), images[29], atol=1 / 255)  # read again


def test_threshold_is_adopted_explicitly_and_the_old_one_kept(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(LOCK_NAME, "*.onnx")))
    before = rundir.read_calibration(run).threshold
    assert runner.invoke(app, ["eval", "--model", str(run), "--out", str(tmp_path / "eval")]).exit_code == 0
    f1 = json.loads((tmp_path / "eval" / "metrics.json").read_text())["f1_max_threshold"]
    result = runner.invoke(app, ["threshold", "--model", str(run), "--from-eval", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    calibration = rundir.read_calibration(run)
    assert calibration.threshold == pytest.approx(f1) and "F1-optimal" in calibration.threshold_rule
    assert calibration.previous_thresholds[-1]["threshold"] == pytest.approx(before)
    result = runner.invoke(app, ["threshold", "--model", str(run), "--value", "nan"])
    assert result.exit_code == 2 and "finite" in result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())  # another model's evaluation: refused
    for changed, said in (
        ({"model_sha256": "0" * 64}, "evaluated the model this folder held before it was trained again"),
        ({"model_sha256": "1" * 64, "model": "/elsewhere/b"}, "evaluated another model (/elsewhere/b)"),
        ({"category": "screw"}, "evaluated category 'screw', not the model's 'bottle'"),  # eval --category screw
    ):
        (tmp_path / "other").mkdir(exist_ok=True)
        (tmp_path / "other" / "metrics.json").write_text(json.dumps({**metrics, **changed}))
        result = runner.invoke(app, ["threshold", "--model", str(run), "--from-eval", str(tmp_path / "other")])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    for text, said in (  # a user trial: each was an internal error
        ("<html></html>", "is not the metrics.json of 'robust-ad eval' (JSONDecodeError)"),
        ("[1, 2]", "is not the metrics.json of 'robust-ad eval' (a JSON list)"),
        (json.dumps({**metrics, "f1_max_threshold": "abc"}), "f1_max_threshold 'abc' is not a number"),
    ):
        (tmp_path / "other" / "metrics.json").write_text(text)
        result = runner.invoke(app, ["threshold", "--model", str(run), "--from-eval", str(tmp_path / "other")])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["threshold", "--model", str(tmp_path / "nowhere"), "--value", "1"])
    assert result.exit_code == 2 and "model folder" in result.output and "not found" in result.output
    assert not (tmp_path / "nowhere").exists()
    assert runner.invoke(app, ["threshold", "--model", str(run), "--value", "2.5"]).exit_code == 0
    assert rundir.read_calibration(run).threshold == 2.5 and len(rundir.read_calibration(run).previous_thresholds) == 2


def test_threshold_says_how_many_normal_images_it_flags_and_a_stale_onnx_file_warns(
    tiny_run: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(LOCK_NAME, "*.onnx")))
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0
    normal = rundir.read_calibration(run).normal_scores
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, ["threshold", "--model", str(run), "--value", "-1e9"])
    assert f"{len(normal)} of {len(normal)} held-out normal images score above it" in " ".join(result.output.split())
    assert f"flags {len(normal)} of {len(normal)} held-out normal images as anomalous" in caplog.text
    assert "passes" not in caplog.text
    caplog.clear()
    kept = len(rundir.read_verification(run)["defect"])
    with caplog.at_level("WARNING"):  # the other direction, said nothing of before: every defect would pass
        assert runner.invoke(app, ["threshold", "--model", str(run), "--value", "1e9"]).exit_code == 0
    assert f"passes {kept} of the {kept} defective images kept with the run (verification.npz)" in caplog.text
    assert runner.invoke(app, ["threshold", "--model", str(run), "--value", "-1e9"]).exit_code == 0
    caplog.clear()
    folder = str(synth_root / "bottle" / "test" / "good")
    with caplog.at_level("WARNING"):  # the file carries the threshold of its export
        result = runner.invoke(app, ["score", folder, "--onnx", str(run / "model.onnx"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0 and "its run folder's calibration.json now -1000000000.000" in caplog.text
    caplog.clear()
    given = ["score", folder, "--onnx", str(run / "model.onnx"), "--threshold", "2", "--out", str(tmp_path / "t")]
    with caplog.at_level("WARNING"):  # a threshold given replaces the file's: nothing stale to say
        assert runner.invoke(app, given).exit_code == 0
    assert "carries the threshold" not in caplog.text


def test_score_names_an_onnx_file_exported_at_another_size_before_recalibration(
    tiny_run: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    import onnx

    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(LOCK_NAME, "*.onnx")))
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0
    proto = onnx.load(str(run / "model.onnx"))  # as an older robust-ad wrote --size 48 48: no recalibration
    props = {p.key: p.value for p in proto.metadata_props if p.key != "calibration"}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**props, "image_size": "48"})
    onnx.save(proto, str(run / "model.onnx"))
    folder = str(synth_root / "bottle" / "test" / "good")
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, ["score", folder, "--onnx", str(run / "model.onnx"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 0 and "was exported at 48 px, not the training size 32" in caplog.text
