"""Robust autoencoder: mirror decoder, losses, training, run folder, resume, resolution."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.api import train
from robust_ad.cli import app
from robust_ad.errors import ModelError
from robust_ad.models.encoder import BACKBONES
from robust_ad.training.autoencoder import fit_decoder
from robust_ad.training.build import build_autoencoder
from tests.conftest import tiny_config


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("size", [32, 50])
def test_mirror_decoder_returns_input_sized_images(backbone: str, size: int) -> None:
    layers = (
        {"layer": "layer2", "feature_layers": ["layer1"]}
        if "resnet" in backbone
        else {"layer": "pool2", "feature_layers": ["relu1_1"]}
    )
    config = tiny_config(Path("."), encoder={"backbone": backbone, **layers})
    out = build_autoencoder(config).eval()(torch.rand(2, 3, size, size))
    assert out.shape == (2, 3, size, size) and out.min() >= 0 and out.max() <= 1


def test_run_folder_is_complete_and_loads_back_identically(tiny_run: Path) -> None:
    for name in (rundir.MODEL, rundir.CONFIG, rundir.GRID, rundir.LOSSES, rundir.TRAINING, rundir.ENCODER):
        assert (tiny_run / name).is_file(), name
    assert not (tiny_run / rundir.CHECKPOINT).exists()
    rows = list(csv.DictReader((tiny_run / rundir.LOSSES).open()))
    assert float(rows[-1]["train_total"]) < float(rows[0]["train_total"])  # loss decreases
    assert "val_total" in rows[0]
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    a = rundir.load_model(tiny_run).reconstruct(images)
    b = rundir.load_model(tiny_run).reconstruct(images)
    np.testing.assert_array_equal(a, b)


def test_model_file_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    model = rundir.load_model(tiny_run)
    copy = tmp_path / "copy"
    copy.mkdir()
    rundir.write_config(copy, rundir.read_config(tiny_run))
    rundir.save_model(copy, model)
    images = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(rundir.load_model(copy).reconstruct(images), model.reconstruct(images))
    with pytest.raises(ModelError, match="not a calibrated detector"):  # weights alone are none
        rundir.load_scorer(copy)


def test_model_trained_at_32_px_reconstructs_64_px(tiny_run: Path) -> None:
    images = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    out = rundir.load_model(tiny_run).reconstruct(images)
    assert out.shape == images.shape and np.isfinite(out).all()


def test_resume_continues_from_saved_epoch(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, autoencoder={"epochs": 1})
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "checkpoint.pt"
    first = fit_decoder(build_autoencoder(config), config.autoencoder, images, images[:2], 8, checkpoint_path=path)
    config.autoencoder.epochs = 3
    history = fit_decoder(
        build_autoencoder(config), config.autoencoder, images, images[:2], 8, checkpoint_path=path, resume=True
    )
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[0] == first[0]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_decoder_learning_rate_follows_its_schedule_through_a_resume(tmp_path: Path, schedule: str) -> None:
    config = tiny_config(tmp_path, autoencoder={"epochs": 2, "lr_schedule": schedule, "lr": 0.01})
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "checkpoint.pt"
    fit_decoder(build_autoencoder(config), config.autoencoder, images, checkpoint_path=path)
    config.autoencoder.epochs = 4
    history = fit_decoder(build_autoencoder(config), config.autoencoder, images, checkpoint_path=path, resume=True)
    cosine = [0.01 * (1 + np.cos(np.pi * k / n)) / 2 for k, n in ((0, 2), (1, 2), (2, 4), (3, 4))]
    # epochs 1-2 ran on the 2-epoch curve; the resumed epochs 3-4 take the 4-epoch curve at their own epoch
    assert [row["lr"] for row in history] == pytest.approx([0.01] * 4 if schedule == "constant" else cosine)


@pytest.mark.parametrize("switched_off", ["w_feature", "w_gan"])
def test_each_loss_can_be_switched_off(tmp_path: Path, switched_off: str) -> None:
    config = tiny_config(tmp_path, autoencoder={"epochs": 1, switched_off: 0.0})
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    history = fit_decoder(build_autoencoder(config), config.autoencoder, images)
    name = {"w_feature": "train_feature", "w_gan": "train_gan"}[switched_off]
    assert name not in history[0] and np.isfinite(history[0]["train_total"])


def test_eps_zero_and_robust_runs_differ_only_in_the_encoder(synth_root: Path, tmp_path: Path) -> None:
    runs = {}
    for eps in (0.0, 0.5):
        config = tiny_config(synth_root, encoder={"eps": eps}, autoencoder={"epochs": 1})
        runs[eps] = train(config, tmp_path / f"eps{eps}")
    configs = [yaml.safe_load((runs[e] / rundir.CONFIG).read_text()) for e in (0.0, 0.5)]
    assert configs[0]["encoder"].pop("eps") == 0.0 and configs[1]["encoder"].pop("eps") == 0.5
    assert configs[0] == configs[1]
    encoders = [rundir.load_model(runs[e]).encoder.state_dict() for e in (0.0, 0.5)]
    assert not torch.equal(encoders[0]["stages.conv1.weight"], encoders[1]["stages.conv1.weight"])
    decoders = []
    for eps in (0.0, 0.5):
        torch.manual_seed(0)
        decoders.append(build_autoencoder(tiny_config(synth_root, encoder={"eps": eps})).decoder.state_dict())
    assert all(torch.equal(decoders[0][k], decoders[1][k]) for k in decoders[0])  # same decoder start


def test_train_cli_refuses_to_overwrite_and_reports_missing_data(synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(out), "--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "precious.txt").read_text() == "keep"
    result = runner.invoke(
        app, ["train", "--category", "nope", "--data-root", str(synth_root), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "no dataset found for category 'nope'" in result.output
    assert not (tmp_path / "x").exists()  # nothing created for a run that cannot start


def test_train_cli_end_to_end(synth_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--category",
            "fabric",
            "--data-root",
            str(synth_root),
            "--out",
            str(tmp_path / "fabric"),
            "--epochs",
            "1",
            "--encoder-epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--eps",
            "0.25",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--recipe",
            "synthetic",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "fabric" / rundir.CONFIG).read_text())
    assert saved["encoder"]["eps"] == 0.25 and saved["data"]["image_size"] == 32 and saved["seed"] == 3


def test_run_reports_the_decoders_colour_cast(tiny_run: Path) -> None:
    colour = rundir.read_training(tiny_run).colour_error_255
    assert len(colour) == 3 and all(0 <= c < 255 for c in colour)


def test_discriminator_is_one_lipschitz_per_layer() -> None:
    from robust_ad.models.decoder import PatchDiscriminator

    disc = PatchDiscriminator(8).train()
    for _ in range(20):  # power iterations run in training-mode forward passes
        disc(torch.rand(2, 3, 32, 32))
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules())
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_the_same_config_trains_the_same_model_whatever_ran_before(synth_root: Path, tmp_path: Path) -> None:
    """The seed covers the initial weights too: in a notebook or a benchmark, a training does not depend on the
    random draws of the work before it."""
    config = tiny_config(synth_root, autoencoder={"epochs": 1})
    models = []
    for before in (1, 2):
        torch.manual_seed(before)  # other work drew from the global stream
        models.append(rundir.load_model(train(config, tmp_path / f"after{before}")).state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_the_kept_decoder_is_the_moving_average_of_its_steps(tmp_path: Path, monkeypatch) -> None:
    """With ``ema``, every step updates the average (the first copies the decoder, the decay warms up to ``ema``)
    and training keeps it."""
    from robust_ad.training.averaging import WARMUP, MovingAverage

    steps: list[dict[str, torch.Tensor]] = []
    update = MovingAverage.update

    def recording(self, live) -> None:
        steps.append({k: v.detach().clone() for k, v in live.state_dict().items() if v.is_floating_point()})
        update(self, live)

    monkeypatch.setattr(MovingAverage, "update", recording)
    config = tiny_config(tmp_path, autoencoder={"epochs": 4, "ema": 0.3, "w_gan": 0.0})
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    model = build_autoencoder(config)
    fit_decoder(model, config.autoencoder, images, images[:4], 8)
    assert len(steps) == 8  # four epochs of two batches
    expected = steps[0]
    for n, step in enumerate(steps[1:], start=1):
        decay = min(0.3, (1 + n) / (WARMUP + n))
        expected = {k: decay * expected[k] + (1 - decay) * step[k] for k in expected}
    kept = model.decoder.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(kept[name], value)
    assert any(not torch.allclose(kept[k], steps[-1][k]) for k in expected)  # not the last step's weights


def test_an_interrupted_training_resumes_its_moving_average(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, autoencoder={"epochs": 3, "ema": 0.8, "w_gan": 0.0})
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    torch.manual_seed(0)
    straight = build_autoencoder(config)
    fit_decoder(straight, config.autoencoder, images, seed=3)
    path = tmp_path / "checkpoint.pt"
    config.autoencoder.epochs = 1
    torch.manual_seed(0)
    fit_decoder(build_autoencoder(config), config.autoencoder, images, seed=3, checkpoint_path=path)
    config.autoencoder.epochs = 3
    resumed = build_autoencoder(config)
    fit_decoder(resumed, config.autoencoder, images, seed=3, checkpoint_path=path, resume=True)
    for a, b in zip(straight.decoder.state_dict().values(), resumed.decoder.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
