"""The pretraining corpus: photo textures and wallpapers from .deb packages, with a manifest."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robust_ad.cli import app
from robust_ad.data.corpus import corpus_files, picture_of
from robust_ad.data.images import read_image, write_image
from robust_ad.errors import DataError
from robust_ad.models.encoder import Encoder
from robust_ad.training.encoder import EncoderRun
from tests.conftest import make_corpus

runner = CliRunner()
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian tools)")


def _deb(folder: Path, package: str, files: dict[str, np.ndarray], licence: str) -> Path:
    """A real .deb (dpkg-deb -b) holding ``files`` and a Debian copyright file."""
    stage = folder / f"stage-{package}"
    (stage / "DEBIAN").mkdir(parents=True)
    (stage / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        f"Description: test data\n"
    )
    doc = stage / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"Format: dep5\n\nFiles: *\nLicense: {licence}\n")
    for name, image in files.items():
        write_image(stage / name, image)
    deb = folder / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(stage), str(deb)], check=True, capture_output=True)
    return deb


def test_corpus_from_deb_files_skips_maps_and_cuts_photographs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    debs = tmp_path / "debs"
    debs.mkdir()
    _deb(
        debs,
        "fake-textures",
        {
            "usr/share/games/fake/textures/stone.jpg": rng.random((200, 300, 3)),
            "usr/share/games/fake/textures/stone_norm.png": rng.random((200, 200, 3)),
            "usr/share/games/fake/textures/wall_bump.png": rng.random((200, 200, 3)),
            "usr/share/games/fake/textures/tiny.png": rng.random((20, 20, 3)),
        },
        "GPL-2+",
    )
    photo = np.clip(rng.random((600, 900, 3)) * 0.2 + np.linspace(0, 0.8, 900)[None, :, None], 0, 1)
    _deb(debs, "fake-wallpapers", {"usr/share/backgrounds/lake.jpg": photo}, "CC-BY-SA-4.0")
    _deb(debs, "fake-meta-wallpapers", {}, "CC0")  # no pictures of its own, as lomiri-wallpapers
    out = tmp_path / "corpus"
    args = ["datasets", "corpus", "--out", str(out), "--debs", str(debs), "--patch", "64"]
    packages = ["--package", "fake-textures", "--package", "fake-wallpapers", "--package", "fake-meta-wallpapers"]
    result = runner.invoke(app, [*args, *packages])
    assert result.exit_code == 0, result.output
    assert "fake-meta-wallpapers gave no images (a metapackage?" in caplog.text
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    textures = [r for r in rows if r["source"] == "fake-textures"]
    photos = [r for r in rows if r["source"] == "fake-wallpapers"]
    assert [r["source_file"] for r in textures] == ["usr/share/games/fake/textures/stone.jpg"]  # maps, tiny: out
    assert textures[0]["licence"] == "GPL-2+" and textures[0]["kind"] == "texture"
    assert len(photos) > 10 and {r["licence"] for r in photos} == {"CC-BY-SA-4.0"}
    assert all(read_image(out / r["file"]).shape == (64, 64, 3) for r in rows)
    again = runner.invoke(app, [*args, "--package", "fake-textures"])
    assert again.exit_code == 2 and "--force" in again.output
    (tmp_path / "no-debs").mkdir()  # refused before the corpus it would replace is cleared
    empty = ["datasets", "corpus", "--out", str(out), "--debs", str(tmp_path / "no-debs"), "--force"]
    assert "no .deb files" in runner.invoke(app, empty).output
    assert (out / "manifest.csv").is_file() and all((out / r["file"]).is_file() for r in rows)


def test_corpus_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "debs").mkdir()
    result = runner.invoke(app, ["datasets", "corpus", "--out", str(tmp_path / "c"), "--debs", str(tmp_path / "debs")])
    assert result.exit_code == 2 and "no .deb files" in result.output
    result = runner.invoke(app, ["datasets", "corpus", "--out", str(tmp_path / "c"), "--photos", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_pretrain_on_a_corpus_then_train_a_category_on_that_encoder(synth_root: Path, tmp_path: Path) -> None:
    import json

    from robust_ad import rundir

    corpus = make_corpus(tmp_path / "corpus", synth_root)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "data: {image_size: 32, batch_size: 8, on_device: true}\n"  # the corpus and the category kept as 8-bit
        "encoder: {width: 0.25, epochs: 1, batch_size: 8, eps: 0.5}\n"
        "autoencoder: {epochs: 1, decoder_width: 0.25}\n"
    )
    encoder = tmp_path / "enc.pt"
    args = ["encoder", "pretrain", "--corpus", str(corpus), "--out", str(encoder), "--recipe", str(recipe)]
    result = runner.invoke(app, [*args, "--width", "0.125"])
    assert result.exit_code == 0, result.output
    run, _ = EncoderRun.load(encoder)
    assert run.config.width == 0.125  # --width over the recipe's
    # one class per photograph (not per resolution), and which corruption it carries
    assert run.config.proxy_task == "labels+corruption" and run.proxy.n_labels == 2
    assert run.classifier.head[-1].out_features == 2 + 5
    report = tmp_path / "eval.json"
    args = ["encoder", "eval", "--encoder", str(encoder), "--corpus", str(corpus), "--steps", "2", "--restarts", "1"]
    result = runner.invoke(app, [*args, "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["n"] == 2  # every 10th patch of each photograph was held out
    result = runner.invoke(app, [*args[:-4], "--category", "bottle"])
    assert result.exit_code == 2 and "either categories or a corpus" in result.output
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe)]
    run_dir = tmp_path / "run"
    args += ["--encoder-weights", str(encoder), "--out", str(run_dir), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--eps", "2"])  # the recipe says width 0.25: the file's own architecture
    assert result.exit_code == 0, result.output  # wins, and its eps (0.5) is what the run records, not --eps 2
    assert (rundir.read_config(run_dir).encoder.width, rundir.read_config(run_dir).encoder.eps) == (0.125, 0.5)
    trained, pretrained = rundir.load_model(run_dir).encoder, EncoderRun.load(encoder)[0].encoder
    for name, value in pretrained.stages.state_dict().items():  # the file's weights, as they were (no fine-tune)
        torch.testing.assert_close(trained.stages.state_dict()[name], value, msg=name)
    plain = tmp_path / "plain.pt"  # stage weights alone, as torchvision's: nothing says their width
    torch.save(Encoder(width=0.5).stages.state_dict(), plain)
    refused = tmp_path / "refused"
    result = runner.invoke(app, [*args[:-5], str(plain), "--out", str(refused), "--device", "cpu"])
    assert result.exit_code == 2 and "does not fit a resnet18 encoder" in result.output
    assert not refused.exists()  # refused before the run folder is made
    assert rundir.read_training(run_dir).encoder_source == str(encoder)


def test_corpus_splits_hold_out_patches_of_photographs_with_the_training_labels(tmp_path: Path) -> None:
    lines = ["file,kind,source,source_file,licence"]
    files = [("wall", "usr/share/wallpapers/Sky/contents/images/1920x1080.jpg")] * 20
    files += [("wall", "usr/share/wallpapers/Sky/contents/images/800x600.jpg")] * 5 + [("tex", "a/stone.jpg")] * 3
    for index, (source, source_file) in enumerate(files):
        write_image(tmp_path / f"images/{index}.png", np.full((16, 16, 3), index / 30, np.float32))
        lines.append(f"images/{index}.png,photo,{source},{source_file},CC0")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    train, val = corpus_files(tmp_path, "train"), corpus_files(tmp_path, "val", 8)
    assert (len(train), len(val), train.size, val.size) == (26, 2, 16, 8)
    assert set(val.labels) == {0} and set(train.labels) == {0, 1}  # 25 patches of one picture, 3 of another
    assert not set(train.paths) & set(val.paths)
    assert picture_of("usr/share/backgrounds/mate/Elephants_3840x2160.jpg") == "usr/share/backgrounds/mate/Elephants"
    (tmp_path / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a manifest"):
        corpus_files(tmp_path, "train")


def test_textures_inside_game_archives_are_unpacked(tmp_path: Path) -> None:
    import zipfile

    rng = np.random.default_rng(1)
    debs = tmp_path / "debs"
    debs.mkdir()
    inner = tmp_path / "inner.png"
    write_image(inner, rng.random((160, 160, 3)))
    archive = tmp_path / "pak0.pk3"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(inner, "textures/base/rock.png")
        bundle.write(inner, "textures/base/rock_n.png")  # a normal map: skipped
    deb = _deb(debs, "fake-game-textures", {}, "GPL-2")
    stage = tmp_path / "debs" / "stage-fake-game-textures"
    (stage / "usr/share/games/fake").mkdir(parents=True)
    shutil.copy(archive, stage / "usr/share/games/fake/pak0.pk3")
    subprocess.run(["dpkg-deb", "-b", str(stage), str(deb)], check=True, capture_output=True)
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["datasets", "corpus", "--out", str(out), "--debs", str(debs), "--patch", "64"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["source_file"] for r in rows] == ["usr/share/games/fake/pak0.pk3.d/textures/base/rock.png"]
