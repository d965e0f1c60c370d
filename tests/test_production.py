"""What a line integrator runs into: bad input, exit codes, concurrent writers, defaults, data safety."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.cli import app
from robust_ad.fileio import LOCK_NAME
from tests.conftest import tiny_config, tiny_recipe

runner = CliRunner()


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def _copy_run(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.onnx", LOCK_NAME, "eval")))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("autoencoder", "pixel_loss", "l3", "autoencoder.pixel_loss = 'l3' is not valid: Input should be 'l1' or 'l2'"),
        ("scoring", "image_score", "mean", "scoring.image_score = 'mean' is not valid"),
        ("scoring", "threshold_quantile", 7, "scoring.threshold_quantile = 7 is not valid"),
        ("data", "image_size", "32", "data.image_size = '32' is not valid: Input should be a valid integer"),
        ("scoring", "nearest_pool", 2, "scoring.nearest_pool = 2 is not valid: must be odd, got 2"),
        ("scoring", "upsample", 0, "scoring.upsample = 0 is not valid: Input should be greater than or equal to 1"),
        ("scoring", "nearest_layers", ["layer4"], "scoring.nearest_layers ['layer4'] are not among encoder.feature"),
        ("encoder", "eps", 1e9, "encoder.eps 1e+09 (L2) is larger than the distance between a black and a white"),
        ("encoder", "norm", "linf", "encoder.eps 8 with norm linf is more than the whole pixel range [0, 1]"),
    ],
)
def test_bad_recipe_values_fail_before_any_work(
    synth_root: Path, tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    settings = {key: value, "eps": 8} if key == "norm" else {key: value}  # 8 meaning 8/255
    recipe = tiny_recipe(tmp_path, **{section: settings})
    out = tmp_path / "run"
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe), "--out", str(out)]
    assert message in _one_line_error(runner.invoke(app, args))
    assert not out.exists()


def test_too_few_normal_images_to_calibrate_are_refused_before_training(tmp_path: Path) -> None:
    """Six normal images hold one out (val_fraction 0.15): its spread is zero, and the model scored every other
    image about 1e15, all anomalous, after a warning only. Held out at 0.34, two: trains."""
    from tests.conftest import make_image

    for i in range(6):
        make_image(tmp_path / "data" / "part" / "good" / f"{i}.png", seed=i)
    recipe = tiny_recipe(tmp_path)
    args = ["train", "--category", "part", "--data-root", str(tmp_path / "data"), "--recipe", str(recipe)]
    message = _one_line_error(runner.invoke(app, [*args, "--out", str(tmp_path / "run")]))
    assert "category 'part' has 6 normal training images, 1 of them held out to calibrate on (data.val_fraction" in (
        message
    )
    assert "calibrating needs at least 2" in message and not (tmp_path / "run").exists()


def test_a_recipe_is_read_as_written(synth_root: Path, tmp_path: Path) -> None:
    """A user trial: a recipe's seed, mode and device were replaced by the options' defaults, a key given twice
    dropped the first block, 1e-3 was 'not a valid number', a binary file was an internal error, a recipe of a
    few lines trained an encoder from scratch (the code's defaults were not the default recipe's) and an explicit
    backbone was replaced by the shipped encoder's in silence."""
    from robust_ad.config import load_config

    values = yaml.safe_load(tiny_recipe(tmp_path).read_text())
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({**values, "seed": 7, "mode": "denoise"}))
    run = tmp_path / "run"
    train = ["train", "--category", "bottle", "--data-root", str(synth_root), "--epochs", "1"]
    assert runner.invoke(app, [*train, "--recipe", str(recipe), "--out", str(run)]).exit_code == 0
    config = rundir.read_config(run)
    assert (config.seed, config.mode, config.device) == (7, "denoise", "cpu")
    texts = {
        "twice.yaml": ("data:\n  image_size: 64\ndata:\n  batch_size: 4\n", "'data' is given twice (line 3)"),
        "binary.yaml": ("\udcff\udcfe\x00", "is not a readable YAML text file"),
        "linf.yaml": ("encoder:\n  norm: linf\n", "encoder.norm linf contradicts encoder.pretrained"),
    }
    for name, (text, message) in texts.items():
        (tmp_path / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        result = runner.invoke(app, [*train, "--recipe", str(tmp_path / name), "--out", str(tmp_path / "no")])
        assert message in _one_line_error(result), name
    backbone = runner.invoke(app, [*train, "--backbone", "resnet50", "--out", str(tmp_path / "no")])
    assert "encoder.backbone resnet50 contradicts" in _one_line_error(backbone)
    noise = runner.invoke(app, [*train, "--noise", "gaussian", "--out", str(tmp_path / "no")])
    assert "--noise applies to --mode denoise" in _one_line_error(noise)
    assert not (tmp_path / "no").exists()
    (tmp_path / "few.yaml").write_text("autoencoder:\n  lr: 1e-3\n")
    few, default = load_config(tmp_path / "few.yaml"), load_config("default")
    assert few.autoencoder.lr == 0.001 and few.model_copy(update={"autoencoder": default.autoencoder}) == default


def test_bad_flag_values_are_one_line_errors(tiny_run: Path, synth_root: Path, tmp_path: Path) -> None:
    image = str(synth_root / "bottle" / "test" / "good" / "000.png")
    train = ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(tmp_path / "r")]
    assert "data.image_size = 0" in _one_line_error(runner.invoke(app, [*train, "--image-size", "0"]))
    epochs = _one_line_error(runner.invoke(app, [*train, "--epochs", "0"]))  # the other problem named, not counted
    assert "autoencoder.epochs = 0" in epochs and epochs.endswith("(and denoise.epochs)")
    synth = ["datasets", "synth", "--category", "bottle", "--out", str(tmp_path / "d"), "--n-train", "0"]
    assert "--n-train must be at least 1" in _one_line_error(runner.invoke(app, synth))
    assert "--batch must be at least 1" in _one_line_error(
        runner.invoke(app, ["score", image, "--model", str(tiny_run), "--batch", "0", "--out", str(tmp_path / "s")])
    )
    out = ["--out", str(tmp_path / "x.onnx")]
    assert "--size must be" in _one_line_error(
        runner.invoke(app, ["export", "--model", str(tiny_run), *out, "--size", "0", "0"])
    )
    for opset, message in (("5", "--opset must be between 12 and"), ("99", "--opset must be between 12 and")):
        assert message in _one_line_error(
            runner.invoke(app, ["export", "--model", str(tiny_run), *out, "--opset", opset])
        )
    assert "--threshold must be a finite number" in _one_line_error(
        runner.invoke(app, ["score", image, "--model", str(tiny_run), "--threshold", "nan", "--out", str(tmp_path)])
    )
    unwritable = ["score", image, "--model", str(tiny_run), "--out", "/proc/robust-ad-results"]
    assert "cannot create results folder" in _one_line_error(runner.invoke(app, unwritable))
    assert not list(tmp_path.iterdir())


def test_a_category_given_twice_is_refused_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    """'train --category a --category b' trained b alone (click keeps the last) and said nothing."""
    from robust_ad import cli

    args = ["robust-ad", "train", "--category", "a", "--category=b", "--data-root", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    said = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(said) == 1
    assert "Invalid value for '--category': given 2 times; this command takes one" in said[0]


def test_version() -> None:
    from robust_ad import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"robust-ad {__version__}"


def test_an_unexpected_error_is_one_line_with_its_own_exit_code(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    import robust_ad.api

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(robust_ad.api, "export", broken)
    line = _one_line_error(runner.invoke(app, ["export", "--model", str(tiny_run)]), code=4)
    assert "internal error: RuntimeError: something nobody expected" in line and "--debug" in line
    debug = runner.invoke(app, ["--debug", "export", "--model", str(tiny_run)])
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the traceback through


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda run: _edit_yaml(run / "config.yaml", "data", "image_size", "abc"), "data.image_size = 'abc'"),
        (lambda run: _edit_yaml(run / "config.yaml", "encoder", "eps", -1), "encoder.eps = -1"),
        (lambda run: _edit_yaml(run / "config.yaml", "scoring", "threshold_quantile", 7), "threshold_quantile = 7"),
        (lambda run: _edit_json(run / "calibration.json", "threshold", float("nan")), "non-finite number NaN"),
        (lambda run: _edit_json(run / "calibration.json", "threshold", None), "'threshold' is None"),
    ],
)
def test_a_damaged_run_folder_is_refused_when_loaded(
    tiny_run: Path, synth_root: Path, tmp_path: Path, edit, message: str
) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    edit(run)
    image = str(synth_root / "bottle" / "test" / "good" / "000.png")
    result = runner.invoke(app, ["score", image, "--model", str(run), "--out", str(tmp_path / "out")])
    assert message in _one_line_error(result)


def _edit_yaml(path: Path, section: str, key: str, value: object) -> None:
    values = yaml.safe_load(path.read_text())
    values[section][key] = value
    path.write_text(yaml.safe_dump(values))


def _edit_json(path: Path, key: str, value: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))


def test_unreadable_files_are_never_hidden_by_an_anomaly(tiny_run: Path, synth_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    shutil.copy(synth_root / "bottle" / "test" / "hole" / "000.png", folder / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    args = ["score", str(folder), "--model", str(tiny_run), "--out", str(out), "--threshold", "-1000"]
    result = runner.invoke(app, [*args, "--fail-on-anomaly"])
    assert result.exit_code == 3 and "broken.png" in result.output  # 3 (unreadable) wins over 1 (anomalous)
    scores = _strict_json(out / "scores.json")
    assert scores["images"][0]["verdict"] == "anomalous" and "broken.png" in scores["errors"][0]["path"]
    assert scores["model"] == str(tiny_run.resolve()) and scores["threshold"] == -1000  # what scored, and against what


def test_a_non_finite_score_never_passes_a_part() -> None:
    from robust_ad.scoring.files import verdict

    assert verdict(float("nan"), 1.0) == "anomalous" and verdict(float("inf"), 1.0) == "anomalous"
    assert verdict(0.5, 1.0) == "normal" and verdict(1.5, 1.0) == "anomalous"


def test_a_folder_being_written_is_refused_to_a_second_writer_and_to_readers(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    image = str(synth_root / "bottle" / "test" / "good" / "000.png")
    with FileLock(run / LOCK_NAME, timeout=0):  # a training in another process holds it
        train = ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(run), "--force"]
        assert "being written by another robust-ad process" in _one_line_error(runner.invoke(app, train))
        score = ["score", image, "--model", str(run), "--out", str(tmp_path / "scores")]
        assert "being written by another robust-ad process" in _one_line_error(runner.invoke(app, score))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME} == before
    assert runner.invoke(app, score).exit_code == 0  # released: readable again


def test_resume_on_a_finished_run_stops_and_an_interrupted_one_is_pointed_to_resume(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    model = (run / rundir.MODEL).read_bytes()
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(run)]
    assert "already finished: nothing to resume" in _one_line_error(runner.invoke(app, [*args, "--resume"]))
    assert (run / rundir.MODEL).read_bytes() == model
    (run / rundir.MODEL).unlink()  # as if training had been interrupted
    assert "pass --resume to continue it" in _one_line_error(runner.invoke(app, args))


def test_resume_says_which_settings_given_now_it_ignores(synth_root: Path, caplog) -> None:
    from robust_ad.api import _warn_ignored_on_resume

    saved = tiny_config(synth_root)
    with caplog.at_level("WARNING"):
        _warn_ignored_on_resume(saved.model_copy(update={"data_root": None}), saved)  # nothing changed
    assert "ignored" not in caplog.text
    given = tiny_config(synth_root, data={"image_size": 48})
    with caplog.at_level("WARNING"):
        _warn_ignored_on_resume(given, saved)
    assert "resuming with the run's own settings (its config.yaml); ignored: data.image_size 48 (the run's 32)" in (
        caplog.text
    )


def test_resume_without_flags_ignores_nothing(tiny_run: Path, synth_root: Path, tmp_path: Path, caplog) -> None:
    """A user trial: '--resume' alone warned that the default recipe's image size, epochs and denoise epochs were
    ignored (flags never given). The run's own config.yaml is now the base: only flags given now can differ."""
    said = {}
    for name, flags in (("alone", []), ("size", ["--image-size", "48"])):
        run = _copy_run(tiny_run, tmp_path / name)
        (run / rundir.MODEL).unlink()  # as if training had been interrupted (before its first checkpoint)
        args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(run), "--resume"]
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert runner.invoke(app, [*args, *flags]).exit_code == 0
        said[name] = caplog.text
    assert "ignored" not in said["alone"]
    assert "ignored: data.image_size 48 (the run's 32)" in said["size"] and "epochs" not in said["size"]


def test_data_root_defaults_to_the_environment_then_the_usual_places(
    synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from robust_ad.data.locate import find_data_root

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ROBUST_AD_DATA", raising=False)
    line = _one_line_error(runner.invoke(app, ["train", "--category", "bottle", "--out", str(tmp_path / "r")]))
    assert "looked in ./datasets/mvtec" in line and "mvtec-ad" in line and not (tmp_path / "r").exists()
    monkeypatch.setenv("ROBUST_AD_DATA", str(synth_root))
    assert find_data_root("bottle") == synth_root
    assert "under ROBUST_AD_DATA" in _one_line_error(runner.invoke(app, ["train", "--category", "nope"]))
    monkeypatch.delenv("ROBUST_AD_DATA")
    shutil.copytree(synth_root / "fabric", work / "datasets" / "mvtec" / "fabric")
    assert find_data_root("fabric") == Path("datasets/mvtec")
    recipe = tiny_recipe(tmp_path, autoencoder={"epochs": 1})
    result = runner.invoke(app, ["train", "--category", "fabric", "--recipe", str(recipe)])  # user's own words
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((work / "runs" / "fabric" / rundir.CONFIG).read_text())["data_root"]
    assert recorded == str(work / "datasets" / "mvtec")  # absolute: eval finds it from any working directory


def test_score_without_model_uses_the_runs_folder(
    tiny_run: Path, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    images = str(synth_root / "bottle" / "test" / "good")
    assert "no finished run in runs/" in _one_line_error(runner.invoke(app, ["score", images]))
    _copy_run(tiny_run, tmp_path / "runs" / "bottle")
    result = runner.invoke(app, ["score", images, "--category", "bottle"])
    assert result.exit_code == 0 and "model: runs/bottle" in result.output, result.output
    denoiser = tmp_path / "runs" / "bottle-denoise"  # trained later, yet it cannot score: passed over
    denoiser.mkdir()
    (denoiser / rundir.CONFIG).write_text(yaml.safe_dump({**rundir.read_config(tiny_run).to_dict(), "mode": "denoise"}))
    (denoiser / rundir.MODEL).write_bytes(b"weights")
    result = runner.invoke(app, ["score", images, "--out", "results2"])  # the most recent detector
    assert result.exit_code == 0 and "model: runs/bottle" in result.output, result.output
    assert "no finished run for category 'screw'" in _one_line_error(
        runner.invoke(app, ["score", images, "--category", "screw", "--out", "results3"])
    )
    one = sorted(Path(images).iterdir())[0]
    result = runner.invoke(app, ["score", str(one), "--out", "results4"])
    assert result.exit_code == 0 and "1 image scored," in result.output, result.output
    # 'the most recent' is by the training time recorded, not by file times (a copy of runs/ sets every model.pt's to
    # the time of the copy, in copy order, and an older model was chosen)
    training = json.loads((tmp_path / "runs" / "bottle" / rundir.TRAINING).read_text())
    older = _copy_run(tiny_run, tmp_path / "runs" / "older")  # copied last: the newest files
    (older / rundir.TRAINING).write_text(json.dumps({**training, "finished": "2020-01-01T00:00:00+00:00"}))
    result = runner.invoke(app, ["score", str(one), "--out", "results5"])
    assert result.exit_code == 0 and "model: runs/bottle" in result.output, result.output


def test_datasets_check_lists_every_problem(synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synth_root / "bottle", root / "bottle")
    broken = sorted((root / "bottle" / "train" / "good").iterdir())[:3]
    for path in broken:
        path.write_bytes(b"not an image")
    result = runner.invoke(app, ["datasets", "check", "--data-root", str(root), "--category", "bottle"])
    assert result.exit_code == 2 and "2 more problems, all listed above" in result.output
    assert all(path.name in result.output for path in broken)


def test_force_never_replaces_a_real_dataset_or_a_models_files(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    real = tmp_path / "mvtec" / "bottle" / "train" / "good"
    real.mkdir(parents=True)
    shutil.copy(synth_root / "bottle" / "train" / "good" / "000.png", real / "000.png")
    args = ["datasets", "synth", "--category", "bottle", "--out", str(tmp_path / "mvtec"), "--force"]
    assert "not written by 'datasets synth'" in _one_line_error(runner.invoke(app, args))
    assert (real / "000.png").is_file()
    model = (tiny_run / rundir.MODEL).read_bytes()
    export = ["export", "--model", str(tiny_run), "--out", str(tiny_run / rundir.MODEL), "--force"]
    assert "--out must name an .onnx file" in _one_line_error(runner.invoke(app, export))
    assert (tiny_run / rundir.MODEL).read_bytes() == model


def test_force_replaces_only_what_robust_ad_wrote_there(tiny_run: Path, synth_root: Path, tmp_path: Path) -> None:
    """User trials: 'train --out allruns --force' (runs/bottle meant) deleted two trained runs and notes.txt,
    'score --out keep --force' a run and a report, a project folder with a config.yaml lost its sources, a
    file put into a run's eval/ went with the run, and so did results scored or denoised into the run folder. Now
    each is refused, naming what would go, and the folder is left as it was (no lock file either); robust-ad's own
    folders are still replaced, eval/ and model.onnx too."""
    images = str(synth_root / "bottle" / "test" / "good")
    score = ["score", images, "--model", str(tiny_run), "--force", "--out"]
    train = ["train", "--category", "bottle", "--data-root", str(synth_root), "--epochs", "1", "--force", "--out"]

    def refused(args: list[str], folder: Path, *named: str) -> None:
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        line = _one_line_error(runner.invoke(app, [*args, str(folder)]))
        assert all(name in line for name in named) and "--force would delete" in line, line
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before

    allruns = tmp_path / "allruns"
    _copy_run(tiny_run, allruns / "bottle")
    (allruns / "notes.txt").write_text("precious")
    refused(train, allruns, "bottle", "notes.txt")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print(1)")
    (project / "config.yaml").write_text("a: 1")  # the name of a run folder's file: not enough to be one
    refused(train, project, "src")
    line = _one_line_error(runner.invoke(app, [*score, str(allruns / "bottle")]))
    assert "is a run folder of robust-ad, not a results folder" in line
    results = tmp_path / "results"
    for _ in range(2):  # its own results folder: replaced
        assert runner.invoke(app, [*score, str(results)]).exit_code == 0
    (results / "overlays" / "annotated_by_me.txt").write_text("mine")  # at any depth
    refused(score, results, "overlays/annotated_by_me.txt")
    (results / "overlays" / "annotated_by_me.txt").unlink()
    (results / "my_data").symlink_to(project)  # a link the user made: it is theirs too
    refused(score, results, "my_data")
    (results / "my_data").unlink()
    (results / ".robust-ad.json").unlink()  # written before the record existed: its overlays/ could hold anything
    refused(score, results, "overlays", "scores.json")
    run = allruns / "bottle"
    (run / ".robust-ad.json").unlink()  # a run folder from before, its own files only: replaced
    (run / "notes.txt").write_text("mine")
    refused(train, run, "notes.txt")
    assert runner.invoke(app, ["threshold", "--model", str(run), "--value", "1.5"]).exit_code == 0
    refused(train, run, "notes.txt")  # threshold did not adopt it as robust-ad's
    (run / "notes.txt").unlink()
    assert runner.invoke(app, [*train, str(run)]).exit_code == 0
    assert runner.invoke(app, [*train, str(run / "v2")]).exit_code == 0  # another model inside this one
    refused(train, run, "v2/ (a run folder)")
    shutil.rmtree(run / "v2")
    assert runner.invoke(app, ["eval", "--model", str(run)]).exit_code == 0  # run/eval/, recorded in the run folder
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0  # run/model.onnx, recorded too
    assert runner.invoke(app, [*score, str(run / "scores")]).exit_code == 0  # the user's results, not the run's
    refused(train, run, "scores/ (a results folder)")
    record = json.loads((run / ".robust-ad.json").read_text())  # as the version before recorded them: still theirs
    (run / ".robust-ad.json").write_text(json.dumps({**record, "files": [*record["files"], "scores/"]}))
    refused(train, run, "scores/ (a results folder)")
    shutil.rmtree(run / "scores")
    (run / ".robust-ad.json").write_text(json.dumps(record))
    assert runner.invoke(app, [*score, str(tmp_path / "results2")]).exit_code == 0
    evaluation = ["eval", "--model", str(run), "--out", str(tmp_path / "results2" / "ev")]  # joins a run folder only
    assert runner.invoke(app, evaluation).exit_code == 0
    refused(score, tmp_path / "results2", "ev/ (an evaluation folder)")
    (run / "eval" / "my_analysis.txt").write_text("mine")
    refused(train, run, "eval/my_analysis.txt")
    (run / "eval" / "my_analysis.txt").unlink()
    assert runner.invoke(app, [*train, str(run)]).exit_code == 0
    assert not (run / "eval").exists() and not (run / "model.onnx").exists() and (run / rundir.MODEL).is_file()


def test_a_file_put_into_an_output_folder_while_a_command_writes_stays_the_users(tmp_path: Path) -> None:
    """The record held whatever appeared in the folder meanwhile (a note written during an hours-long training),
    so the next --force deleted it; it lists what robust-ad wrote."""
    from robust_ad.errors import OverwriteError
    from robust_ad.fileio import output_folder, write_text

    with output_folder(tmp_path / "out", False, "results folder") as folder:
        write_text(folder / "scores.csv", "path\n")
        (folder / "my_notes.txt").write_text("written while it ran")
    with (
        pytest.raises(OverwriteError, match=r"holds my_notes.txt, which robust-ad did not write there"),
        output_folder(tmp_path / "out", True, "results folder"),
    ):
        pass
    assert (tmp_path / "out" / "my_notes.txt").is_file()


def test_force_never_clears_a_dataset_linked_into_the_data_root(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    """A category folder linked in from elsewhere (a network share): an output folder where its images really are
    is refused, --force or not, for eval and train alike."""
    store = Path(shutil.copytree(synth_root / "bottle", tmp_path / "store" / "real"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bottle").symlink_to(store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    data = ["--data-root", str(tmp_path / "data")]
    for command in (
        ["eval", "--model", str(tiny_run), "--category", "bottle", *data, "--out", str(store / "test"), "--force"],
        ["train", "--category", "bottle", *data, "--out", str(store / "test"), "--force", "--epochs", "1"],
    ):
        assert "overlaps the input" in _one_line_error(runner.invoke(app, command))
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def test_usage_errors_of_the_installed_command_are_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, message in (
        (["score", "x", "--batch", "abc"], "Invalid value for '--batch'"),
        (["nope"], "No such command 'nope'"),
        (["encoder", "train", "--category", "b", "--out", str(tmp_path / "enc.png")], "--out must name a .pt file"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "robust_ad", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_shipped_recipes_are_found_from_a_source_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a clone with a non-editable install, the clone's robust_ad (which has no robust_ad/recipes)
    shadows the installed one: the shipped recipes still come from the checkout's recipes/."""
    from importlib import resources

    from robust_ad.config import load_config, recipe_path

    def no_recipes_package(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(resources, "files", no_recipes_package)
    assert recipe_path("mvtec") == Path(__file__).resolve().parents[1] / "recipes" / "mvtec.yaml"
    assert load_config("mvtec").data.image_size == 256


def test_an_interrupted_command_says_so_and_exits_130(monkeypatch, tmp_path: Path, capsys) -> None:
    from robust_ad import cli
    from robust_ad.data import synth

    calls = []

    def interrupted(image, rng):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return image

    monkeypatch.setattr(synth, "_acquisition", interrupted)
    args = ["robust-ad", "datasets", "synth", "--category", "bottle", "--out", str(tmp_path), "--size", "32"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    said = capsys.readouterr().err  # not the training's advice (--resume): a user trial was sent round in a circle
    assert (
        stopped.value.code == 130 and "interrupted: any output it had begun is incomplete" in said and "--force" in said
    )
    monkeypatch.undo()  # the half-written category is marked synthetic: --force replaces it
    path = synth.synthesize(tmp_path, "bottle", 32, 3, 1, 1, force=True)
    assert len(list((path / "train" / "good").iterdir())) == 3


def test_torch_device_names_are_checked_in_one_line() -> None:
    from robust_ad.device import resolve_device
    from robust_ad.errors import ConfigError

    assert resolve_device("cpu").type == "cpu"
    for typo in ("gpu", "cuda:x", "cpu:0"):
        with pytest.raises(ConfigError, match=f"unknown device '{typo}'"):
            resolve_device(typo)


def test_one_empty_folder_given_alone_is_named_whole(tmp_path: Path) -> None:
    from robust_ad.errors import DataError
    from robust_ad.scoring.files import resolve_paths

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"^no images found in {tmp_path / 'empty'} \(suffixes"):
        resolve_paths(str(tmp_path / "empty"))


def test_an_empty_camera_folder_among_others_is_warned_of(tmp_path: Path, caplog) -> None:
    """One camera's empty folder beside another's frames was passed over in silence, exit 0."""
    from robust_ad.scoring.files import resolve_paths
    from tests.conftest import make_image

    (tmp_path / "cam2").mkdir()
    frame = make_image(tmp_path / "cam1" / "f.png")
    assert resolve_paths([tmp_path / "cam1", tmp_path / "cam2"]) == [frame]
    assert f"no images in {tmp_path / 'cam2'}" in caplog.text


def test_long_work_says_how_far_it_is_off_a_terminal(monkeypatch, capsys) -> None:
    """A service's log showed nothing for the minutes a folder took to score."""
    from robust_ad import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.delenv("ROBUST_AD_QUIET", raising=False)
    assert list(progress.track(range(4), "scoring images")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("scoring images: 0/4 (0%)") and lines[-1].startswith("scoring images: 3/4 (75%)")
    monkeypatch.setenv("ROBUST_AD_QUIET", "1")
    assert list(progress.track(range(4), "scoring images")) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_terminated_training_records_what_it_wrote_and_force_replaces_it(
    synth_root: Path, tmp_path: Path, stop: str
) -> None:
    """SIGTERM skipped the record of what a training had written, so --force refused robust-ad's own folder; after
    SIGKILL (an out-of-memory kill, a power cut) it still did, naming config.yaml, checkpoint.pt and a half-written
    checkpoint's temporary: the record now follows the writes, and a killed write's temporary is robust-ad's."""
    import signal
    import subprocess
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "robust_ad", "train", "--category", "bottle", "--data-root", str(synth_root)]
    args += ["--recipe", str(tiny_recipe(tmp_path, autoencoder={"epochs": 200})), "--out", str(run)]
    training = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mark = run / ".robust-ad.json"
    for _ in range(600):  # until its first checkpoint is in the folder's record
        if (mark.is_file() and "checkpoint.pt" in mark.read_text()) or training.poll() is not None:
            break
        time.sleep(0.1)
    training.send_signal(getattr(signal, stop))
    _, err = training.communicate(timeout=120)
    if stop == "SIGTERM":
        assert training.returncode == 143 and "terminated (an interrupted training continues with --resume)" in err
    else:
        assert training.returncode == -9
        (run / ".checkpoint.pt.k1ll3d_x.pt").write_bytes(b"half a checkpoint")
    again = ["train", "--category", "bottle", "--data-root", str(synth_root), "--epochs", "1", "--force"]
    result = runner.invoke(app, [*again, "--recipe", str(tiny_recipe(tmp_path)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    (run / ".model.pt.k1ll3d_x.pt").write_bytes(b"half a model")  # left by a killed threshold, say: removed by the next
    assert runner.invoke(app, ["threshold", "--model", str(run), "--value", "3"]).exit_code == 0
    assert not list(run.glob(".*.k1ll3d_x.pt"))


def test_a_file_of_a_run_folder_is_not_replaced_by_another_commands_out(tiny_run: Path, tmp_path: Path) -> None:
    """encoder train --out RUN/model.pt --force destroyed a trained model, encoder eval --out RUN/calibration.json
    its calibration, export --model A --out B/model.onnx B's exported model; export may still replace its own."""
    from robust_ad.errors import OverwriteError
    from robust_ad.fileio import check_writable

    run = _copy_run(tiny_run, tmp_path / "run")
    for name in (rundir.MODEL, rundir.CALIBRATION):
        with pytest.raises(OverwriteError, match=f"{name} belongs to the run folder"):
            check_writable(run / name, force=True)
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0
    assert runner.invoke(app, ["export", "--model", str(run), "--force"]).exit_code == 0
    other = ["export", "--model", str(tiny_run), "--out", str(run / "model.onnx"), "--force"]  # another run's model
    assert "belongs to the run folder" in _one_line_error(runner.invoke(app, other))
    into = ["export", "--model", str(tiny_run), "--out", str(run / "other.onnx")]  # the user's file in that folder
    assert runner.invoke(app, into).exit_code == 0
    assert "other.onnx" not in json.loads((run / ".robust-ad.json").read_text())["files"]
    (run / ".robust-ad.json").unlink()  # a run folder from before the record: its files are known by name
    with pytest.raises(OverwriteError, match="belongs to the run folder"):
        check_writable(run / rundir.MODEL, force=True)
    assert check_writable(tmp_path / "elsewhere.pt", force=False) == tmp_path / "elsewhere.pt"


def test_an_output_file_inside_the_data_read_is_refused(
    tiny_run: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: 'encoder eval --out' and 'export --out' with --force replaced a user's file inside the dataset
    (output folders there were already refused); 'encoder train --out' wrote its file among the images."""
    data = tmp_path / "data"
    shutil.copytree(synth_root / "bottle", data / "bottle")
    notes = data / "bottle" / "notes.json"
    notes.write_text("{}")
    evaluate = [
        "encoder",
        "eval",
        "--encoder",
        "robust-ad-r18w05-l2-eps1",
        "--category",
        "bottle",
        "--data-root",
        str(data),
    ]
    encoder = ["encoder", "train", "--category", "bottle", "--data-root", str(data), "--epochs", "1"]
    for args in (
        [*evaluate, "--out", str(notes), "--force"],
        [*encoder, "--out", str(data / "bottle" / "enc.pt")],
        [*encoder, "--out", str(data / "bottle" / "enc.pt"), "--resume"],
    ):
        assert "overlaps the input" in _one_line_error(runner.invoke(app, args)), args
    assert notes.read_text() == "{}" and not (data / "bottle" / "enc.pt").exists()
    export = ["export", "--model", str(tiny_run), "--out", str(synth_root / "bottle" / "model.onnx")]
    assert "overlaps the input" in _one_line_error(runner.invoke(app, export))
    assert not (synth_root / "bottle" / "model.onnx").exists()
    from robust_ad.api import train_encoder
    from robust_ad.config import load_config
    from robust_ad.errors import DataError

    def reached(config: object, categories: list[str], split: str) -> None:
        raise DataError(f"the data of {categories} is read")

    monkeypatch.setattr("robust_ad.data.loading.labelled_files", reached)
    monkeypatch.chdir(tmp_path)  # no data root given: the working directory is not taken for one
    with pytest.raises(DataError, match=re.escape("the data of ['bottle'] is read")):
        train_encoder(load_config("default", {"device": "cpu"}), ["bottle"], "enc.pt")
    # a notebook trial: a dict config (as api.train takes) and one category given alone ('b' was not found; as in
    # evaluate_encoder)
    with pytest.raises(DataError, match=re.escape("the data of ['bottle'] is read")):
        train_encoder({"device": "cpu"}, "bottle", "enc.pt")
