"""Robust encoder: PGD, adversarial training, checkpoints, the encoder CLI."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from typer.testing import CliRunner

from robust_ad.adversarial import pgd
from robust_ad.cli import app
from robust_ad.config import EncoderConfig
from robust_ad.errors import ConfigError, ModelError
from robust_ad.models.encoder import BACKBONES, Encoder, ProxyClassifier
from robust_ad.tensors import to_tensor
from robust_ad.training import proxy
from robust_ad.training.encoder import EncoderRun, evaluate_encoder, train_encoder
from robust_ad.training.weights import load_encoder_weights

TINY = {"width": 0.125, "layer": "layer2", "feature_layers": ["layer1"]}


def _classifier(seed: int = 0) -> ProxyClassifier:
    torch.manual_seed(seed)
    return ProxyClassifier(Encoder("resnet18", "layer2", ["layer1"], width=0.125), 3)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_ball_raises_loss_and_leaves_model_alone(norm: str) -> None:
    model = _classifier()
    model.train()
    x = torch.rand(6, 3, 32, 32)
    y = torch.randint(0, 3, (6,))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    eps = 0.5 if norm == "l2" else 4 / 255
    x_adv = pgd(model, x, y, eps, norm, steps=10)
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training, "train mode must be restored"
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_rejects_unknown_norm() -> None:
    with pytest.raises(ConfigError, match="threat model"):
        pgd(_classifier(), torch.rand(1, 3, 32, 32), torch.tensor([0]), 0.1, "l1")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_and_exposes_features(backbone: str) -> None:
    layer, feats = ("layer2", ["layer1"]) if "resnet" in backbone else ("relu2_1", ["relu1_1"])
    encoder = Encoder(backbone, layer, feats, width=0.125).eval()
    out = encoder.features(torch.rand(2, 3, 64, 64))
    assert list(out)[-1] == layer and out[layer].shape[0] == 2 and feats[0] in out
    with pytest.raises(ConfigError, match="has no layer"):
        Encoder(backbone, "nope")


def _gratings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, faint horizontal vs vertical gratings under pixel noise."""
    labels = rng.integers(0, 2, n)
    wave = 0.5 + 0.1 * np.sin(np.linspace(0, 4 * np.pi, 32))[None, :]
    images = [np.broadcast_to(wave if c == 0 else wave.T, (32, 32)) + rng.normal(0, 0.08, (32, 32)) for c in labels]
    return np.clip(np.repeat(np.stack(images)[..., None], 3, 3), 0, 1).astype(np.float32), labels


@pytest.mark.slow
def test_robust_training_beats_standard_under_attack() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = _gratings(256, rng)
    x_test, y_test = _gratings(128, rng)
    results = {}
    for eps in (0.0, 2.0):
        config = EncoderConfig(**{**TINY, "width": 0.25}, eps=eps, proxy_task="labels", epochs=4)
        run = train_encoder(x_train, config, y_train, seed=0)
        results[eps] = evaluate_encoder(run, x_test, y_test, eps=2.0, steps=10, restarts=1)
    assert results[0.0]["clean_acc"] > 0.9 and results[2.0]["clean_acc"] > 0.9
    assert results[2.0]["pgd_acc"] > results[0.0]["pgd_acc"] + 0.3, results


def test_batch_norm_statistics_follow_the_trained_weights() -> None:
    """Running averages lag behind weights that move fast on near-identical images; the lag left the eval-mode
    network (what PGD attacks and the autoencoder uses) at chance while train-mode accuracy looked fine."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    product = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.4 + 0.2 * yy, 0.6 - 0.2 * xx * yy], -1)
    images = np.clip(product + rng.normal(0, 0.02, (64, 32, 32, 3)), 0, 1).astype(np.float32)
    config = EncoderConfig(**{**TINY, "width": 0.25}, eps=0.0, proxy_task="corruption", epochs=3, batch_size=16)
    trained = train_encoder(images, config, seed=0).classifier
    fresh = copy.deepcopy(trained)
    generator = torch.Generator().manual_seed(123)
    update_bn([proxy.Proxy("corruption").batch(to_tensor(images), None, generator)[0] for _ in range(4)], fresh)
    norms = [(a, b) for a, b in zip(trained.modules(), fresh.modules(), strict=True) if isinstance(a, nn.BatchNorm2d)]
    # In standard deviations of the features: 0.20 when recalibrated (two draws of random corruptions differ by
    # that much: 0.2001 on a CUDA host with torch 2.11, 0.1997 on this CPU with torch 2.14), 0.84 without the
    # recalibration (lagging running averages).
    lag = max(((a.running_mean - b.running_mean).abs() / b.running_var.sqrt()).max().item() for a, b in norms)
    assert lag < 0.4, lag


def test_checkpoint_resume_continues_from_saved_epoch(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "enc.pt"
    config = EncoderConfig(**TINY, eps=0.5, epochs=1, batch_size=4)
    train_encoder(images, config, checkpoint_path=path)
    config.epochs = 3
    run = train_encoder(images, config, checkpoint_path=path, resume=True)
    assert [h["epoch"] for h in run.history] == [1, 2, 3]
    loaded, payload = EncoderRun.load(path)
    assert payload["epoch"] == 3
    for a, b in zip(loaded.classifier.state_dict().values(), run.classifier.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())


def test_loads_robustness_library_checkpoint(tmp_path: Path) -> None:
    source = Encoder("resnet18", "layer2", ["layer1"])
    torchvision_state = {k: v + 1 for k, v in source.stages.state_dict().items()}
    checkpoint = {"epoch": 90, "model": {}}
    for key, value in torchvision_state.items():
        checkpoint["model"][f"module.model.{key}"] = value
        checkpoint["model"][f"module.attacker.model.{key}"] = value * 0
    checkpoint["model"]["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    torch.save(checkpoint, tmp_path / "robust.pt")
    target = load_encoder_weights(Encoder("resnet18", "layer2", ["layer1"]), tmp_path / "robust.pt")
    for key, value in target.stages.state_dict().items():
        assert torch.equal(value, torchvision_state[key])


def test_loads_plain_torchvision_state_dict_with_vgg_names(tmp_path: Path) -> None:
    source = Encoder("vgg16", "pool1", ["relu1_1"])
    state = {
        f"{source.source_names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v + 1
        for k, v in source.stages.state_dict().items()
    }
    state["classifier.6.weight"] = torch.zeros(10, 4)  # layers after the cut are ignored
    torch.save(state, tmp_path / "vgg.pth")
    target = load_encoder_weights(Encoder("vgg16", "pool1", ["relu1_1"]), tmp_path / "vgg.pth")
    assert torch.equal(target.stages.conv1_1.weight, source.stages.conv1_1.weight + 1)


def test_mismatched_or_corrupt_weights_fail_clearly(tmp_path: Path) -> None:
    torch.save({"state_dict": Encoder("resnet18", "layer2", ["layer1"]).stages.state_dict()}, tmp_path / "r18.pt")
    with pytest.raises(ModelError, match=r"does not fit a resnet50 encoder: \d+ weights missing \(first: layer1"):
        load_encoder_weights(Encoder("resnet50", "layer2", ["layer1"]), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match=r"conv1.weight has shape \(64, 3, 7, 7\), expected \(32, 3, 7, 7\)"):
        load_encoder_weights(Encoder("resnet18", "layer2", ["layer1"], width=0.5), tmp_path / "r18.pt")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="weights missing"):
        load_encoder_weights(Encoder("resnet18", "layer2", ["layer1"]), tmp_path / "other.pt")
    for content in (b"not a checkpoint", b"hello", b"jjjj", b""):  # each failed somewhere else in the unpickler
        (tmp_path / "bad.pt").write_bytes(content)
        with pytest.raises(ModelError, match=r"not a readable PyTorch checkpoint \(\w+(: .+)?\)$"):
            load_encoder_weights(Encoder("resnet18", "layer2", ["layer1"]), tmp_path / "bad.pt")


class _Command:
    """Pickles as a call of os.system: what a hostile weights file holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return os.system, (self.command,)


def test_a_plain_pickle_that_runs_a_command_is_refused_without_running_it(tmp_path: Path) -> None:
    """A bare pickle (no torch header) failed weights_only and went to the restricted reader, whose load() for
    torch's legacy header was the plain pickle.load: the command ran."""
    import pickle

    proof = tmp_path / "ran"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Command(f"touch {proof}"), protocol=2))
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_encoder_weights(Encoder("resnet18", "layer2", ["layer1"]), tmp_path / "evil.pt")
    assert not proof.exists()


def test_encoder_cli_train_then_eval(synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "enc.pt"
    args = [
        "encoder",
        "train",
        "--category",
        "bottle",
        "--category",
        "fabric",
        "--data-root",
        str(synth_root),
        "--out",
        str(out),
        "--task",
        "labels",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--eps",
        "0.5",
        "--recipe",
        "synthetic",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, args).exit_code == 2  # exists, no --force
    result = runner.invoke(
        app,
        [
            "encoder",
            "eval",
            "--encoder",
            str(out),
            "--category",
            "bottle",
            "--category",
            "fabric",
            "--data-root",
            str(synth_root),
            "--steps",
            "3",
            "--restarts",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "PGD accuracy" in result.output


def test_the_joint_proxy_task_needs_both_heads_right() -> None:
    task = proxy.Proxy("labels+corruption", 3)
    images, labels = torch.rand(10, 3, 32, 32), torch.arange(10) % 3
    x, y = task.batch(images, labels, torch.Generator().manual_seed(0))
    assert task.n_outputs == 3 + 5 and torch.equal(y // 5, labels) and len(set((y % 5).tolist())) > 1
    assert torch.equal(x[y % 5 == 0], images[y % 5 == 0])  # class 0: clean
    logits = torch.full((10, 8), -20.0)
    logits[torch.arange(10), y // 5] = 20.0
    logits[torch.arange(10), 3 + y % 5] = 20.0
    assert torch.equal(task.predict(logits), y) and float(task.loss(logits, y)) < 1e-6
    logits[0, 3 + y[0] % 5] = -20.0  # the corruption head wrong on one image: that prediction is wrong
    assert (task.predict(logits) != y).tolist() == [True] + [False] * 9 and float(task.loss(logits, y)) > 0.1
    with pytest.raises(ConfigError, match="at least two labels"):
        proxy.Proxy("labels+corruption", 1)


def test_each_corruption_changes_one_square_patch_as_its_class_says() -> None:
    size, n = 32, 60
    images = 0.3 + 0.4 * torch.rand(n, 3, size, size)  # away from 0 and 1: no clamping inside the patches
    classes = torch.arange(n) % proxy.N_CORRUPTIONS
    out = proxy._corrupt(images, classes, torch.Generator().manual_seed(0))
    assert torch.equal(out[classes == 0], images[classes == 0])
    blurred = F.avg_pool2d(images, 5, 1, 2, count_include_pad=False)
    for i in range(n):
        changed = (out[i] != images[i]).any(0).nonzero()
        if int(classes[i]) == 0:
            continue
        (top, left), (bottom, right) = changed.min(0).values.tolist(), changed.max(0).values.tolist()
        side = bottom - top + 1
        assert side == right - left + 1 and size // 8 <= side < size // 3, (i, top, left, bottom, right)
        patch, original = (
            out[i, :, top : bottom + 1, left : right + 1],
            images[i, :, top : bottom + 1, left : right + 1],
        )
        if int(classes[i]) == 1:  # cut-paste: another square of the same image
            squares = images[i].unfold(1, side, 1).unfold(2, side, 1)  # (3, rows, cols, side, side)
            assert (squares == patch[:, None, None]).all(-1).all(-1).all(0).any()
        elif int(classes[i]) == 2:
            assert 0.12 < float((patch - original).std()) < 0.18
        elif int(classes[i]) == 3:  # one gain per channel
            gains = patch / original
            assert torch.allclose(gains, gains.mean((1, 2), keepdim=True), atol=1e-5)
        else:
            assert torch.allclose(patch, blurred[i, :, top : bottom + 1, left : right + 1])
