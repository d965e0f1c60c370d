"""Denoising mode: training with corruptions, 'robust-ad denoise', evaluation, ONNX export."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.api import train
from robust_ad.cli import app
from robust_ad.data.images import read_image, write_image
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.denoising import corrupt_images, evaluate_denoising, image_quality, load_denoiser
from robust_ad.errors import ConfigError
from robust_ad.export import export
from robust_ad.models.denoiser import SkipDenoiser, estimate_sigma, impulses, median9
from robust_ad.runtime import InferenceSession
from robust_ad.tensors import to_tensor
from robust_ad.training import autoencoder
from robust_ad.training.engine import Engine
from robust_ad.training.noise import NOISES, apply_noise
from tests.conftest import make_image, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def denoiser(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(
        synth_root,
        mode="denoise",
        denoise={"noises": ["gaussian"], "gaussian_sigma": [0.15, 0.3], "epochs": 8, "decoder_width": 0.5, "depth": 1},
    )
    return train(config, tmp_path_factory.mktemp("runs") / "bottle-denoise")


@pytest.mark.parametrize("kind", NOISES)
def test_each_noise_changes_images_and_keeps_the_range(kind: str) -> None:
    x = torch.rand(2, 3, 16, 16)
    level = {"gaussian": 0.1, "poisson": 20.0, "salt_pepper": 0.1, "jpeg": 10, "sensor": 20.0}[kind]
    noisy = apply_noise(x, kind, level, torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, x)
    if kind == "sensor":  # a camera's output: 8-bit levels
        assert torch.allclose(noisy * 255, (noisy * 255).round(), atol=1e-4)


def test_train_takes_the_noises_to_learn(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "data: {image_size: 32, batch_size: 8}\nencoder: {pretrained: null, width: 0.125, epochs: 1, batch_size: 8}\n"
        "autoencoder: {epochs: 1, decoder_width: 0.25, augment: flip}\n"
        "denoise: {epochs: 2, decoder_width: 0.25, lr_schedule: cosine, augment: dihedral}\n"
    )
    engines: list[Engine] = []

    def recorded(*args: object, **kwargs: object) -> Engine:
        engines.append(Engine(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(autoencoder, "Engine", recorded)
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe), "--mode"]
    out = tmp_path / "run"
    result = runner.invoke(app, [*args, "denoise", "--noise", "sensor", "--noise", "jpeg", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = rundir.read_config(out)
    assert config.denoise.noises == ["sensor", "jpeg"] and config.denoise.architecture == "skip"
    # the skip denoiser trains with its own settings: epochs, width, pixel loss only, learning-rate schedule
    ae = config.autoencoder
    assert (ae.epochs, ae.decoder_width, ae.w_gan, ae.lr_schedule) == (2, 0.25, 0.0, "cosine")
    assert ae.augment == "dihedral" and [e.rotate for e in engines] == [True]  # the denoiser's augmentation
    assert len((out / rundir.LOSSES).read_text().strip().splitlines()) == 1 + 2  # header, two epochs
    assert isinstance(rundir.load_model(out), SkipDenoiser)
    result = runner.invoke(app, [*args, "denoise", "--noise", "rain", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "rain" in result.output and len(result.output.strip().splitlines()) == 1


def test_denoiser_raises_psnr_above_the_noisy_input(denoiser: Path) -> None:
    config = rundir.read_config(denoiser)
    clean = load_split(open_dataset(config), "test", config).images
    noisy = corrupt_images(clean, "gaussian", 0.25, seed=5)
    restored = rundir.load_model(denoiser).reconstruct(noisy)
    assert image_quality(clean, restored)[0] > image_quality(clean, noisy)[0] + 1.0


def test_denoise_evaluation_table_has_every_method(denoiser: Path) -> None:
    config = rundir.read_config(denoiser)
    images = load_split(open_dataset(config), "test", config).images[:4]

    def only_gaussian(noisy: np.ndarray, kind: str, level: float) -> np.ndarray | None:
        return noisy * 0.5 if kind == "gaussian" else None

    models = {"robust": rundir.load_model(denoiser)}
    rows = evaluate_denoising(models, images[:2], images, noises=["gaussian"], baselines={"half": only_gaussian})
    methods = {row["method"].split(" (")[0] for row in rows}
    assert methods == {"noisy input", "OpenCV NLM", "robust", "half"}
    assert [(r["noise"], r["method"]) for r in rows if r["level"] == 0] == [
        ("none", "noisy input"),
        ("none", rows[1]["method"]),
        ("none", "robust"),
    ]  # the clean images as input come first; the baseline declined them
    assert len(rows) == 3 + 4 * 4  # 'none', then 4 Gaussian levels x 4 methods
    assert all(np.isfinite(row["psnr"]) and 0 <= row["ssim"] <= 1 and row["ms_per_mp"] >= 0 for row in rows)
    assert rows[0]["psnr"] == 100.0  # the clean input is its own reference: an exact copy


def _write_variants(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    variants = {
        "rgb8.png": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8),
        "rgb16.png": rng.integers(0, 65536, (24, 20, 3), dtype=np.uint16),
        "gray8.png": rng.integers(0, 256, (24, 20), dtype=np.uint8),
        "gray16.tif": rng.integers(0, 65536, (24, 20), dtype=np.uint16),
        "rgba8.png": rng.integers(0, 256, (24, 20, 4), dtype=np.uint8),
    }
    folder.mkdir()
    for name, image in variants.items():
        cv2.imwrite(str(folder / name), image)
    return variants


def test_denoise_cli_keeps_depth_channels_and_inputs(denoiser: Path, tmp_path: Path) -> None:
    variants = _write_variants(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["denoise", str(tmp_path / "in"), "--model", str(denoiser), "--out", str(out), "--compare"]
    )
    assert result.exit_code == 0, result.output
    for name, image in variants.items():
        written = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert written.dtype == image.dtype and written.shape == image.shape, name
    alpha = cv2.imread(str(out / "rgba8.png"), cv2.IMREAD_UNCHANGED)[:, :, 3]
    np.testing.assert_array_equal(alpha, variants["rgba8.png"][:, :, 3])
    assert len(list((out / "comparison").iterdir())) == len(variants)
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
    same = runner.invoke(
        app, ["denoise", str(tmp_path / "in"), "--model", str(denoiser), "--out", str(tmp_path / "in"), "--force"]
    )
    assert same.exit_code == 2 and "never overwritten" in same.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


def test_denoise_keeps_subfolders_and_refuses_inputs_that_would_share_an_output(denoiser: Path, tmp_path: Path) -> None:
    """A user trial: two cameras' folders with the same frame names were refused (outputs were flat); now their
    subfolders are kept. Two folders given that hold the same names would still share outputs: refused."""
    for folder in ("a", "b"):
        _write_variants(tmp_path / folder)
    result = runner.invoke(
        app,
        ["denoise", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(denoiser), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2 and "share the output name" in result.output
    first = sorted(p.name for p in (tmp_path / "a").iterdir())[0]  # the clash named is of two files of that name
    assert f"share the output name {first} ({tmp_path / 'a' / first}, {tmp_path / 'b' / first})" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "out").exists()
    for camera in ("a", "b"):
        make_image(tmp_path / "line" / camera / "frame.png", seed=len(camera))
    make_image(tmp_path / "line" / "b" / "photo.png")  # --compare: photo.png and photo.jpg stay apart too
    cv2.imwrite(str(tmp_path / "line" / "b" / "photo.jpg"), np.full((32, 32, 3), 128, np.uint8))
    args = ["denoise", str(tmp_path / "line"), "--model", str(denoiser), "--out", str(tmp_path / "out"), "--compare"]
    assert runner.invoke(app, args).exit_code == 0
    inputs = sorted(p.relative_to(tmp_path / "line") for p in (tmp_path / "line").rglob("*") if p.is_file())
    written = [p for p in (tmp_path / "out").rglob("*.*") if "comparison" not in p.parts and p.name[0] != "."]
    assert sorted(p.relative_to(tmp_path / "out") for p in written) == inputs
    again = ["denoise", str(tmp_path / "line" / "b"), str(tmp_path / "line"), "--model", str(denoiser)]
    assert runner.invoke(app, [*again, "--out", str(tmp_path / "out2")]).exit_code == 0  # any order: the same names
    written = [p for p in (tmp_path / "out2").rglob("*.*") if p.name[0] != "."]
    assert sorted(p.relative_to(tmp_path / "out2") for p in written) == inputs
    comparisons = sorted(
        p.relative_to(tmp_path / "out" / "comparison") for p in (tmp_path / "out" / "comparison").rglob("*.png")
    )
    assert comparisons == sorted(Path(f"{p}.png") for p in inputs)


def test_a_single_path_given_to_the_api_is_one_input(denoiser: Path, tmp_path: Path) -> None:
    """api.denoise("in/a.png") split the string into characters ("i: no such file or folder")."""
    from robust_ad.api import denoise

    image = make_image(tmp_path / "in" / "a.png")
    written, errors = denoise(str(image), denoiser, tmp_path / "out")
    assert [row["path"] for row in written] == [str(image)] and not errors
    written, _ = denoise(tmp_path / "in", denoiser, tmp_path / "out2")
    assert len(written) == 1


def test_detection_commands_name_a_denoising_model_for_what_it_is(
    denoiser: Path, synth_root: Path, tmp_path: Path
) -> None:
    test = str(synth_root / "bottle" / "test" / "good")
    for args in (
        ["score", test, "--model", str(denoiser), "--out", str(tmp_path / "scores")],
        ["eval", "--model", str(denoiser), "--out", str(tmp_path / "eval")],
        ["threshold", "--model", str(denoiser), "--value", "3"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is a denoising model" in result.output, (args, result.output)
    onnx_file = tmp_path / "denoiser.onnx"
    assert runner.invoke(app, ["export", "--model", str(denoiser), "--out", str(onnx_file)]).exit_code == 0
    result = runner.invoke(app, ["score", test, "--onnx", str(onnx_file), "--out", str(tmp_path / "onnx-scores")])
    assert result.exit_code == 2 and "is a denoising model" in result.output, result.output


def test_denoise_rejects_a_detection_model(tiny_run: Path, tmp_path: Path) -> None:
    _write_variants(tmp_path / "in")
    result = runner.invoke(
        app, ["denoise", str(tmp_path / "in"), "--model", str(tiny_run), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "detection model" in result.output
    (tmp_path / "model.onnx").write_bytes(b"")  # a user trial: 'model folder ... not found' for an existing file
    onnx = ["denoise", str(tmp_path / "in"), "--model", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, onnx)
    assert result.exit_code == 2 and "is a file, not a run folder" in result.output and "score --onnx" in result.output


def test_a_denoiser_saved_with_other_networks_is_refused_in_one_line(denoiser: Path, tmp_path: Path) -> None:
    """A model.pt whose weights miss a layer of today's networks (an older robust-ad's): retrain, not a traceback."""
    old = tmp_path / "old-denoiser"
    shutil.copytree(denoiser, old)
    model = rundir.load_model(old)
    model.decoder.band_norm = torch.nn.Identity()  # the decoder before its wavelet bands were normalised
    rundir.save_model(old, model)
    _write_variants(tmp_path / "in")
    result = runner.invoke(app, ["denoise", str(tmp_path / "in"), "--model", str(old), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "retrained" in result.output and len(result.output.strip().splitlines()) == 1


def test_denoiser_exports_to_onnx_with_the_clean_image_as_output(denoiser: Path, tmp_path: Path) -> None:
    path = tmp_path / "denoise.onnx"
    meta = export(denoiser, path)
    session = InferenceSession(path, device="cpu")
    assert session.output_names == ["clean"] and meta["mode"] == "denoise"
    assert meta["parity_pixels_changed"] > 0.5  # checked on noisy images, which the network changes (not the guard)
    assert meta["guard"] == "true"
    for option in ({"size": (32, 32)}, {"reconstruction": True}):  # a detection model's options: said, not ignored
        with pytest.raises(ConfigError, match="apply to detection models"):
            export(denoiser, tmp_path / "other.onnx", **option)
    model = rundir.load_model(denoiser)
    for shape in ((2, 40, 36, 3), (1, 300, 70, 3)):  # the second wraps the guard's probe tile
        images = np.random.default_rng(0).random(shape).astype(np.float32)
        images = np.round(images * 255) / 255
        got = session.denoise(images)
        expected = model.reconstruct(images)
        assert got.shape == images.shape
        assert np.abs(got - expected).max() <= 1 / 255 + 1e-6  # uint8 output: within one grey level


def test_denoiser_exports_in_half_precision(denoiser: Path, tmp_path: Path) -> None:
    """fp16 networks, guard arithmetic in float32: export's own parity check (3 grey levels) passes."""
    meta = export(denoiser, tmp_path / "half.onnx", fp16=True)
    assert meta["precision"] == "fp16" and meta["parity_image_max_diff"] <= 3.0
    session = InferenceSession(tmp_path / "half.onnx", device="cpu")
    noisy = corrupt_images(_smooth(count=2), "gaussian", 0.2, seed=1)
    assert image_quality(_smooth(count=2), session.denoise(noisy))[0] > image_quality(_smooth(count=2), noisy)[0]


@pytest.mark.parametrize("depth", [0, 2])
def test_the_skip_denoiser_starts_as_the_identity_and_leaves_noise_free_images_alone(depth: int) -> None:
    torch.manual_seed(0)
    model = SkipDenoiser(width=0.125, decoder_width=0.25, depth=depth).eval()
    assert len(model.decoder.trunk) == depth
    model.decoder.init_output()
    x = torch.rand(2, 3, 37, 50)  # sides the strides do not divide: padded by mirroring, then cropped
    assert torch.allclose(model(x), x, atol=1e-6)  # a zero correction of exact Haar bands
    torch.nn.init.normal_(model.decoder.head.weight, std=0.1)  # a decoder that changes what it sees
    assert not torch.allclose(model(x), x, atol=1e-3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 48), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2])[None]  # no measurable noise (median |HH| = 0)
    assert float(estimate_sigma(smooth)) < model.min_sigma and torch.equal(model(smooth), smooth)
    assert torch.equal(model(x, sigma=0.0), x)  # a known level below min_sigma: untouched as well
    noisy = (smooth + 0.1 * torch.randn_like(smooth)).clamp(0, 1)
    assert abs(float(estimate_sigma(noisy)) - 0.1) < 0.02  # the blind estimate of the level


def test_the_noise_estimate_is_not_fooled_by_brightness_texture_and_reads_grey_images() -> None:
    """Noise is read where texture is weak (the colour-opponent channels), and from the channels of grey images."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(2, 1, 64, 64, generator=generator).expand(-1, 3, -1, -1)  # strong, in brightness only
    clean = 0.6 * texture + torch.tensor([0.2, 0.1, 0.05]).view(1, 3, 1, 1)
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=generator)
    assert torch.allclose(estimate_sigma(noisy), torch.tensor(0.02), atol=0.003)
    assert float(estimate_sigma(noisy[:, :1]).min()) > 0.05  # what a channel by itself says
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    grey = ((yy + xx) / 2 + 0.05 * torch.randn(64, 64, generator=generator)).expand(1, 3, -1, -1)  # same in each
    assert abs(float(estimate_sigma(grey)) - 0.05) < 0.01


@pytest.mark.parametrize("depth", [0, 2])
def test_the_skip_denoiser_starts_learning_at_once(depth: int) -> None:
    """The input's wavelet bands reach the decoder normalised: in 60 steps the error falls well below the noise's
    (with the raw bands, drowned by the features beside them, it stayed within 10 % of it); residual blocks at
    half resolution, starting as the identity, do not hold it back."""
    torch.manual_seed(0)
    model = SkipDenoiser(width=0.125, decoder_width=0.25, depth=depth)
    model.decoder.init_output()
    model.encoder.requires_grad_(False)
    model.train()
    optimizer = torch.optim.Adam(model.decoder.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    for _ in range(60):
        frequency = torch.rand(8, 3, 1, 1, generator=generator) * 20
        clean = 0.5 + 0.4 * torch.sin(frequency * yy + frequency.flip(1) * xx)
        noisy = clean + 0.05 * torch.randn(clean.shape, generator=generator)
        loss = (model(noisy, sigma=0.05) - clean).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.85 * (noisy - clean).abs().mean().item()


def test_near_clean_images_are_never_made_worse(denoiser: Path) -> None:
    """Below the smallest level the denoiser acts on, its output is its input: PSNR is kept exactly."""
    yy, xx = np.mgrid[0:64, 0:64] / 64
    smooth = np.stack([yy, xx, (yy + xx) / 2], -1)[None].repeat(4, 0).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.5 / 255, smooth.shape)
    near_clean = np.clip(smooth + noise, 0, 1).astype(np.float32)
    assert float(estimate_sigma(to_tensor(near_clean)).max()) < rundir.read_config(denoiser).denoise.min_sigma
    restored = rundir.load_model(denoiser).reconstruct(near_clean)
    assert image_quality(smooth, restored)[0] >= image_quality(smooth, near_clean)[0] - 0.1


def test_jpeg_outputs_keep_the_inputs_quality(denoiser: Path, tmp_path: Path) -> None:
    """A user trial: a clean quality-100 JPEG came back 5 dB worse, re-encoded at OpenCV's default quality 95 with
    4:2:0 chroma. A frame the denoiser leaves as it was is now the file itself; a changed one is written at quality
    100 without chroma subsampling."""
    yy, xx = np.mgrid[0:96, 0:96] / 96
    smooth = np.round(np.stack([yy, xx, (yy + xx) / 2], -1) * 255).astype(np.uint8)
    textured = np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8)
    (tmp_path / "in").mkdir()
    for name, image in (("clean.jpg", smooth), ("noise.jpg", textured)):
        cv2.imwrite(str(tmp_path / "in" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    args = ["denoise", str(tmp_path / "in"), "--model", str(denoiser), "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    assert (tmp_path / "out" / "clean.jpg").read_bytes() == (tmp_path / "in" / "clean.jpg").read_bytes()
    written = tmp_path / "written.jpg"
    write_image(written, textured / 255.0)
    assert image_quality(textured[None] / 255.0, read_image(written)[None])[0] > 40  # quality 95, 4:2:0: 12.7 dB


def test_frames_one_pixel_wide_or_high_are_denoised_too(denoiser: Path, tmp_path: Path) -> None:
    """A user trial: a 1 px frame stopped the whole folder with an internal error (the noise estimate's Haar step
    had no pixels), in torch and in the exported graph."""
    (tmp_path / "in").mkdir()
    shapes = {"dot.png": (1, 1), "row.png": (1, 64), "column.png": (64, 1), "part.png": (40, 36)}
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        cv2.imwrite(str(tmp_path / "in" / name), rng.integers(0, 255, (*shape, 3), np.uint8))
    args = ["denoise", str(tmp_path / "in"), "--model", str(denoiser), "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    assert {name: cv2.imread(str(tmp_path / "out" / name)).shape[:2] for name in shapes} == shapes
    export(denoiser, tmp_path / "d.onnx")
    session = InferenceSession(tmp_path / "d.onnx", device="cpu")
    model = rundir.load_model(denoiser)
    for shape in shapes.values():
        images = rng.integers(0, 255, (1, *shape, 3)).astype(np.float32) / 255
        assert np.abs(session.denoise(images) - model.reconstruct(images)).max() <= 1 / 255 + 1e-6


def _smooth(size: int = 64, count: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.2 + 0.6 * yy, 0.2 + 0.6 * xx, 0.5 + 0.3 * np.sin(40 * yy) * np.cos(30 * xx)], -1)
    return image[None].repeat(count, 0).astype(np.float32)


def _blur_denoiser(blur: int) -> SkipDenoiser:
    """A skip denoiser whose network is a Gaussian blur."""
    smoother = SkipDenoiser(width=0.125, decoder_width=0.25).eval()
    smoother.correction = lambda x, level: (
        torch.from_numpy(np.stack([cv2.GaussianBlur(im, (blur, blur), 0) for im in x.permute(0, 2, 3, 1).numpy()]))
        .permute(0, 3, 1, 2)
        .sub(x)
    )
    return smoother


def _blends(smoother: SkipDenoiser, clean: np.ndarray, noisy: np.ndarray, **options) -> tuple[np.ndarray, ...]:
    """The share of the network's change that the guard kept, and the share the clean image shows to be best."""
    x = to_tensor(noisy)
    change = smoother.restore(x, None).numpy() - x.numpy()
    error = to_tensor(clean).numpy() - x.numpy()
    oracle = np.clip((change * error).sum((1, 2, 3)) / (change**2).sum((1, 2, 3)), 0, 1)
    chosen = ((smoother(x, **options).numpy() - x.numpy()) * change).sum((1, 2, 3)) / (change**2).sum((1, 2, 3))
    return chosen, oracle


@pytest.mark.parametrize(("sigma", "blur"), [(0.1, 5), (0.01, 9)])
def test_the_guard_blends_output_and_input_as_the_clean_image_would(sigma: float, blur: int) -> None:
    """SURE, from the noisy image alone, picks about the blend of input and output that the clean image shows
    to be best: nearly all of a mild smoother at strong noise, little of a strong one at weak noise."""
    clean = _smooth()
    chosen, oracle = _blends(_blur_denoiser(blur), clean, corrupt_images(clean, "gaussian", sigma, seed=3), sigma=sigma)
    assert np.abs(chosen - oracle).max() < 0.1, (chosen, oracle)
    assert (oracle > 0.8).all() if sigma == 0.1 else (oracle < 0.5).all()  # the two regimes the cases test


def test_the_blind_guard_weighs_each_region_by_its_own_noise() -> None:
    """Noise of 0.1 in the top half, 0.03 in the bottom (as shot noise differs between bright and dark parts):
    the blind guard keeps about the best share of a smoother; one image-wide level would keep half of that."""
    clean = _smooth()
    level = np.where(np.arange(64)[None, :, None, None] < 32, 0.1, 0.03)
    noisy = np.clip(clean + level * np.random.default_rng(3).standard_normal(clean.shape), 0, 1).astype(np.float32)
    smoother = _blur_denoiser(5)
    chosen, oracle = _blends(smoother, clean, noisy)
    assert np.abs(chosen - oracle).max() < 0.1, (chosen, oracle)
    one_level, _ = _blends(smoother, clean, noisy, sigma=estimate_sigma(to_tensor(noisy)))
    assert (one_level < oracle - 0.3).all(), (one_level, oracle)


def test_impulses_on_an_otherwise_clean_image_are_corrected_and_nothing_else_is() -> None:
    """Dead and hot pixels leave the noise estimate below the level the denoiser acts on; they are still
    corrected (before, the whole image came back untouched), and the clean pixels are left as they were."""
    clean = _smooth()
    noisy = clean.copy()
    hit = np.random.default_rng(0).random(clean.shape[:3]) < 0.01
    noisy[hit] = np.where(np.random.default_rng(1).random(hit.sum()) < 0.5, 0.0, 1.0)[:, None]
    smoother = _blur_denoiser(5)
    assert float(estimate_sigma(to_tensor(noisy)).max()) < smoother.min_sigma
    restored = smoother(to_tensor(noisy)).permute(0, 2, 3, 1).numpy()
    assert image_quality(clean, restored)[0] > image_quality(clean, noisy)[0] + 3
    assert np.abs(restored - noisy)[~hit].max() < 0.02


def test_near_clean_images_are_not_made_worse_by_a_denoiser_trained_on_strong_noise(denoiser: Path) -> None:
    """The fixture learnt sigma 0.15 to 0.3; at sigma 2/255 the network alone repaints the image, the guarded
    model keeps its quality (PSNR within 0.1 dB of the input's)."""
    config = rundir.read_config(denoiser)
    clean = load_split(open_dataset(config), "test", config).images
    noisy = corrupt_images(clean, "gaussian", 2 / 255, seed=5)
    model = rundir.load_model(denoiser)
    assert model.guard
    before = image_quality(clean, noisy)[0]
    assert image_quality(clean, model.reconstruct(noisy))[0] >= before - 0.1
    model.guard = False
    assert image_quality(clean, model.reconstruct(noisy))[0] < before - 1.0  # what the guard prevents


def test_the_median_network_is_the_median_of_every_nine_values() -> None:
    """A comparator network sorts every input iff it sorts every 0-1 input (Knuth's 0-1 principle): all 512."""
    bits = torch.tensor([[(n >> i) & 1 for i in range(9)] for n in range(512)], dtype=torch.float32)
    assert torch.equal(median9(list(bits.T)), bits.median(1).values)
    values = torch.randn(9, 1000)
    assert torch.equal(median9(list(values)), values.median(0).values)


def test_impulses_are_isolated_saturated_pixels_and_are_corrected_in_full() -> None:
    clean = to_tensor(_smooth(count=1))
    clean[..., :8, :8] = 1.0  # a clipped highlight: saturated, but not isolated
    hit = torch.zeros_like(clean[:, :1], dtype=torch.bool)
    hit[..., 20:60:9, 20:60:7] = True
    noisy = torch.where(hit, 1.0, clean)
    found = impulses(noisy, torch.full((1, 1, 1, 1), 2 / 255))
    assert found.any(1, keepdim=True)[hit].all() and not found[..., :7, :7].any()  # not the highlight
    assert not (found.any(1, keepdim=True) & ~hit)[..., 9:, :].any()  # nothing else (its corner may count)
    model = SkipDenoiser(width=0.125, decoder_width=0.25).eval()
    torch.nn.init.normal_(model.decoder.head.weight, std=0.1)
    restored = model.restore(noisy, torch.full((1,), 2 / 255))
    guarded = model(noisy, sigma=2 / 255)
    assert torch.allclose(guarded[found], restored[found])
    assert not torch.allclose(guarded[~found], restored[~found], atol=1e-3)  # elsewhere, a blend


def test_denoise_with_a_known_noise_level(denoiser: Path, tmp_path: Path) -> None:
    _write_variants(tmp_path / "in")
    args = ["denoise", str(tmp_path / "in"), "--model", str(denoiser), "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "zero"), "--sigma", "0"])
    assert result.exit_code == 0, result.output
    same = cv2.imread(str(tmp_path / "zero" / "rgb8.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(same, cv2.imread(str(tmp_path / "in" / "rgb8.png"), cv2.IMREAD_UNCHANGED))
    result = runner.invoke(app, [*args, str(tmp_path / "strong"), "--sigma", "60"])
    assert result.exit_code == 0, result.output
    assert not np.array_equal(cv2.imread(str(tmp_path / "strong" / "rgb8.png"), cv2.IMREAD_UNCHANGED), same)
    for name, flag in (("guarded", "--guard"), ("network", "--no-guard")):
        result = runner.invoke(app, [*args, str(tmp_path / name), "--sigma", "2", flag])
        assert result.exit_code == 0, result.output
    distance = {  # at a low known level, the guard keeps the output near its input; the network alone does not
        name: np.abs(cv2.imread(str(tmp_path / name / "rgb8.png")).astype(float) - same).mean()
        for name in ("guarded", "network")
    }
    assert distance["guarded"] < distance["network"] / 2, distance
    result = runner.invoke(app, [*args, str(tmp_path / "bad"), "--sigma", "-3"])
    assert result.exit_code == 2 and "--sigma must be" in result.output


def test_a_loaded_denoiser_has_its_batch_norms_folded_and_denoises_as_before(denoiser: Path) -> None:
    config = rundir.read_config(denoiser)
    noisy = corrupt_images(load_split(open_dataset(config), "test", config).images[:4], "gaussian", 0.2, seed=3)
    unfolded = rundir.load_model(denoiser).eval()
    folded = load_denoiser(denoiser)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.encoder.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.encoder.modules())
    np.testing.assert_allclose(folded.reconstruct(noisy), unfolded.reconstruct(noisy), atol=1e-4)


def test_training_corruption_mixes_levels_per_image_and_leaves_a_share_clean() -> None:
    from robust_ad.config import DenoiseConfig
    from robust_ad.training.noise import random_corruption

    config = DenoiseConfig(noises=["gaussian", "salt_pepper"], gaussian_sigma=[0.05, 0.1], clean_fraction=0.25)
    corrupt = random_corruption(config)
    x = torch.full((400, 3, 16, 16), 0.5)
    noisy = corrupt(x, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, corrupt(x, torch.Generator().manual_seed(3)))  # one seed, one corruption
    changed = (noisy != x).flatten(1)
    clean = ~changed.any(1)
    assert 0.15 < clean.float().mean() < 0.35
    impulse = ((noisy == 0) | (noisy == 1)).flatten(1).any(1) & (changed.float().mean(1) < 0.2)
    gaussian = ~clean & ~impulse
    spread = (noisy - x).flatten(1)[gaussian].std(1)  # each image its own sigma, within the range
    assert spread.min() > 0.045 and spread.max() < 0.11 and spread.max() - spread.min() > 0.03
    assert 0.25 < gaussian.float().mean() < 0.5 and 0.25 < impulse.float().mean() < 0.5


def test_eval_of_a_denoiser_prints_each_noise_level_in_its_own_unit(denoiser: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--mode", "denoise", "--model", str(denoiser), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "clean input" in result.output and "sigma 25/255" in result.output and "0.0980" not in result.output
    assert (tmp_path / "e" / "denoise_metrics.json").is_file()
    # and a picture: per setting, the clean test image and every method's result on it, captioned with its PSNR
    rows = json.loads((tmp_path / "e" / "denoise_metrics.json").read_text())["rows"]
    settings = Counter((row["noise"], row["level"]) for row in rows)
    methods = max(settings.values())  # the input, OpenCV NLM (its h tuned per setting), the model
    grid = read_image(tmp_path / "e" / "denoise_examples.png")
    size = rundir.read_config(denoiser).data.image_size
    factor = -(-192 // size)
    tile = size * factor, max(14, size * factor // 10) + size * factor  # width, height with its caption
    assert grid.shape[:2] == (len(settings) * (tile[1] + 2) + 2, (1 + methods) * (tile[0] + 2) + 2)
    assert grid.std() > 0.05  # pictures, not blank tiles


def test_large_frames_go_through_the_network_in_tiles_without_seams(denoiser: Path, monkeypatch) -> None:
    """A 12-megapixel frame took 7.5 GB whole (benchmarks/FINDINGS.md); in tiles with enough context around each,
    on the frame's own stride grid, the correction is the whole frame's: no seam anywhere."""
    import robust_ad.models.denoiser as module

    model = load_denoiser(denoiser, torch.device("cpu"))
    x = torch.rand(1, 3, 300, 260, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([25 / 255])
    with torch.no_grad():
        whole = model.correction(x, sigma)
        monkeypatch.setattr(module, "TILE", 64)  # 5 x 5 tiles, the last ones partial
        tiled = model.correction(x, sigma)
        monkeypatch.setattr(module, "TILE_MARGIN", 8)  # too little context: the tiles show
        thin = model.correction(x, sigma)
    assert torch.allclose(tiled, whole, atol=1e-6)
    assert (thin - whole).abs().max() > 1e-3
