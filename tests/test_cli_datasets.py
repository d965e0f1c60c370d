"""The CLI, through typer's runner and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robust_ad.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "datasets" in result.output


def test_help_shows_flags_without_a_value_type() -> None:
    """typer 0.29 labels every flag <bool>, as if --force took a value: pyproject keeps it below."""
    result = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "160"})
    line = next(row for row in result.output.splitlines() if "--force" in row)
    assert "<bool>" not in line and "BOOLEAN" not in line, result.output


def test_synth_then_check(tmp_path: Path) -> None:
    args = [
        "datasets",
        "synth",
        "--category",
        "bottle",
        "--out",
        str(tmp_path),
        "--size",
        "32",
        "--n-train",
        "4",
        "--n-test-good",
        "2",
        "--n-per-defect",
        "1",
    ]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, [*args, "--n-per-defect", "2", "--force"]).exit_code == 0
    check = ["datasets", "check", "--data-root", str(tmp_path), "--category", "bottle"]
    result = runner.invoke(app, check)
    assert result.exit_code == 0, result.output
    assert "deformed" in result.output and "usable" in result.output
    next((tmp_path / "bottle" / "ground_truth" / "hole").iterdir()).unlink()  # 1 of 2 left: not 'no'
    assert any("hole" in row and "1 of 2" in row for row in runner.invoke(app, check).output.splitlines())


def test_check_unusable_dataset_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "a.png").write_bytes(b"broken")
    (tmp_path / "good" / "b.png").write_bytes(b"broken")
    result = runner.invoke(app, ["datasets", "check", "--data-root", str(tmp_path), "--category", "x"])
    assert result.exit_code == 2 and "not a readable image" in result.output and "1 more problem," in result.output


def test_subprocess_error_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ROBUST_AD_QUIET": "1"}
    cmd = [
        sys.executable,
        "-m",
        "robust_ad",
        "datasets",
        "check",
        "--data-root",
        str(tmp_path / "missing"),
        "--category",
        "bottle",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_subprocess_synth_and_check(tmp_path: Path) -> None:
    env = {**os.environ, "ROBUST_AD_QUIET": "1"}
    base = [sys.executable, "-m", "robust_ad", "datasets"]
    synth = [
        *base,
        "synth",
        "--category",
        "gravel",
        "--out",
        str(tmp_path),
        "--size",
        "32",
        "--n-train",
        "3",
        "--n-test-good",
        "1",
        "--n-per-defect",
        "1",
    ]
    assert subprocess.run(synth, capture_output=True, env=env, timeout=120).returncode == 0
    check = subprocess.run(
        [*base, "check", "--data-root", str(tmp_path), "--category", "gravel"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr


def test_the_datasets_commands_have_their_python_api(tmp_path: Path) -> None:
    """`import robust_ad` then robust_ad.api (an AttributeError before), and datasets synth / check there."""
    import robust_ad

    path = robust_ad.api.synthesize(tmp_path, "bottle", size=32, n_train=6, n_test_good=2, n_per_defect=1)
    assert path == tmp_path / "bottle"
    report = robust_ad.api.check_dataset(tmp_path, "bottle")
    assert report.usable and report.masks_matched == 5 and not report.notes
    with pytest.raises(AttributeError, match="no attribute 'apii'"):
        robust_ad.apii  # noqa: B018


def test_api_train_takes_a_dict_of_settings_over_the_default_recipe(synth_root: Path, tmp_path: Path) -> None:
    """A notebook's api.train({...}) raised AttributeError: 'dict' object has no attribute 'encoder'."""
    from robust_ad import api, rundir

    settings = {"category": "bottle", "data_root": str(synth_root), "device": "cpu", "data": {"image_size": 32}}
    settings["autoencoder"] = {"epochs": 1, "decoder_width": 0.25}
    run = api.train(settings, tmp_path / "run")
    config = rundir.read_config(run)
    assert config.data.image_size == 32 and config.encoder.pretrained == "robust-ad-r18w05-l2-eps1"
