"""The benchmark command runs end to end on tiny settings and writes every table."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robust_ad.config import COMPONENTS, DEFAULT_COMPONENTS
from tests.conftest import make_corpus, tiny_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path: Path, synth_root: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", synth_root)
    args = ["--quick", "--out", str(tmp_path), "--report", str(tmp_path / "RESULTS.md"), "--corpus", str(corpus)]
    report = _run_module().main(args)
    text = report.read_text()
    for section in (
        "eps sweep",
        "Detection and reconstruction",
        "Score components",
        "Losses",
        "Resolution",
        "Denoising",
        "Inference speed",
        "anomalib peers",
        "Pretrained encoders",
        "Machine:",
    ):
        assert section in text, section
    results = json.loads((tmp_path / "results.json").read_text())
    pretrained = results["pretrained"]
    assert [(row["eps"], row["width"]) for row in pretrained["encoders"]] == [(0.0, 0.125), (1.0, 0.125), (1.0, 0.25)]
    assert all(row["n_classes"] == 2 and 0 <= row["clean_acc"] <= 1 for row in pretrained["encoders"])
    encoders = ["scratch", "pretrained eps=0", "pretrained eps=1", "pretrained eps=1 + fine-tune"]
    encoders.append("pretrained eps=1 width 0.25")  # the profile's wider encoder
    assert [row["encoder"] for row in pretrained["detection"]] == encoders
    assert "beats per-category from scratch on" in text
    parts = [(row["encoder"], row["components"]) for row in pretrained["components"]]  # each alone, then fused
    assert parts == [(e, c) for e in encoders[1:3] for c in [*COMPONENTS, "+".join(DEFAULT_COMPONENTS)]]
    assert "pretrained eps=1 beats the twin with pixel on" in text
    others = [(row["encoder"], row["seed"]) for row in pretrained["seeds"]]  # the quick profile's seed 1
    assert others == [(encoder, 1) for encoder in encoders]
    assert "On the mean over 2 seeds, pretrained eps=1 beats its standard twin on" in text
    assert "Against per-category from scratch:" in text
    assert {row["eps"] for row in results["detection"]} == {0.0, 1.0}
    assert all(0 <= row["image_auroc"] <= 1 and row["ms_per_image"] > 0 for row in results["detection"])
    measured = [(r["encoder"], r["eps"], r["eval_size"], r["calibration"]) for r in results["resolution"]]
    at = [(32, "of S"), (64, "of S"), (64, "refit at 2S")]  # trained at 32: at S, at 2S, at 2S recalibrated
    assert measured == [(e, eps, *a) for eps in (0.0, 1.0) for e in ("category", "shipped") for a in at]
    refit = [r for r in results["resolution"] if r["calibration"] == "refit at 2S"]
    assert all(0 <= r["image_auroc"] <= 1 and r["psnr"] > 0 for r in refit)
    assert results["speed"]["run"].endswith("bottle-pretrained_eps=1")  # the model a user gets by default
    speed = [row for row in results["speed"]["rows"] if row["processor"] == "cpu"]
    pairs = {(engine, batch) for engine in ("torch", "torch, channels-last", "onnxruntime") for batch in (1, 32)}
    assert {(row["engine"], row["batch"]) for row in speed} == pairs
    assert all(row["images_per_s"] > 0 and row["fraction_of_peak"] > 0 for row in speed)
    assert (tmp_path / "results.png").stat().st_size > 0
    import peers

    if peers.available() is None:
        assert "Not run: anomalib is not installed" in text
    else:  # with the bench extra, the quick profile's peers ran and sit in the table beside robust-ad
        assert {row["model"] for row in results["peers"]["rows"]} == {"Padim", "Ganomaly"}
        assert "| Padim | bottle |" in text
        # the leading peers on the other data seeds, against the pretrained encoders' means over seeds
        assert {(row["model"], row["seed"]) for row in results["peer_seeds"]["rows"]} == {("Padim", 1)}
        assert "On the mean over 2 seeds, against the best of these peers: scratch: beats" in text
        assert "pretrained eps=0: beats every peer's mean on" in text

    # --reuse-runs measures the finished runs of the same config again, and trains only those that changed: here
    # the runs on the wider encoder, whose file is now newer than they are
    models = {path.parent.name: path.stat().st_mtime_ns for path in (tmp_path / "runs").glob("*/model.pt")}
    os.utime(tmp_path / "encoders" / "enc-eps1-w0.25.pt")
    # and a run whose config.yaml predates a setting (the decoder's average), which reads back as today's default
    stale = tmp_path / "runs" / "bottle-pretrained_eps=0-seed1" / "config.yaml"
    written = yaml.safe_load(stale.read_text())
    del written["autoencoder"]["ema"]
    stale.write_text(yaml.safe_dump(written))
    # but one written before a score component of weight 0 existed (colour) is the same run: reused
    older = tmp_path / "runs" / "bottle-pretrained_eps=1-seed1" / "config.yaml"
    written = yaml.safe_load(older.read_text())
    assert written["scoring"]["weights"].pop("colour") == 0
    older.write_text(yaml.safe_dump(written))
    _run_module().main([*args, "--sections", "pretrained", "--reuse-runs"])
    again = json.loads((tmp_path / "results.json").read_text())["pretrained"]
    trained = {path.parent.name for path in (tmp_path / "runs").glob("*/model.pt")}
    trained = {name for name in trained if (tmp_path / "runs" / name / "model.pt").stat().st_mtime_ns != models[name]}
    wider = {"bottle-pretrained_eps=1_width_0.25", "bottle-pretrained_eps=1_width_0.25-seed1"}
    assert trained == {*wider, "bottle-pretrained_eps=0-seed1"}
    rows = zip(pretrained["detection"], again["detection"], strict=True)
    assert all(a["image_auroc"] == b["image_auroc"] for a, b in list(rows)[:-1])  # the same models, measured again


def test_pretrained_section_runs_on_the_shipped_encoders(tmp_path: Path, synth_root: Path) -> None:
    """`--shipped-encoders`: the section without a corpus or an eps sweep pretrained here, on the package's encoders
    at the profile's eps (its fine-tune too), their names in the report."""
    from robust_ad import rundir

    bench = _run_module()
    profile = json.loads(json.dumps(bench.PROFILES["quick"]))
    profile["pretrained"]["seeds"] = [0]
    section = bench.pretrained_comparison(profile, synth_root, tmp_path / "runs", None, tmp_path, shipped=True)
    names = {0.0: "robust-ad-r18w05-l2-eps0", 1.0: "robust-ad-r18w05-l2-eps1"}
    assert section["encoders"] == [{"name": name, "eps": eps, "width": 0.5} for eps, name in names.items()]
    encoders = ["scratch", "pretrained eps=0", "pretrained eps=1", "pretrained eps=1 + fine-tune"]
    assert [row["encoder"] for row in section["detection"]] == encoders
    for variant, name, finetune in [(encoders[1], names[0.0], 0), (encoders[3], names[1.0], 1)]:
        config = rundir.read_config(tmp_path / "runs" / f"bottle-{variant.replace(' ', '_')}")
        assert (config.encoder.pretrained, config.encoder.finetune_epochs) == (name, finetune)
    assert rundir.read_config(tmp_path / "runs" / "bottle-scratch").encoder.pretrained is None
    text = "\n\n".join(bench._pretrained_report({"pretrained": section, "recipe_eps": 1.0, "profile": profile}))
    assert "| robust-ad-r18w05-l2-eps1 | 1.000 | 0.500 |" in text and "MODEL_CARD.md" in text


def test_components_table_reports_the_components_a_kept_section_measured() -> None:
    """A section kept from before a component existed reports the components its rows have (it raised KeyError)."""
    bench = _run_module()
    rows = [
        {"category": c, "encoder": e, "components": part, "image_auroc": auroc}
        for c in ("bottle", "fabric")
        for e, auroc in ((bench.TWIN, 0.5), ("pretrained eps=1", 0.9))
        for part in ("pixel", "ssim", "pixel+ssim")
    ]
    text = "\n".join(bench._components_by_encoder(rows))
    assert "| category | encoder | pixel | ssim | fused |" in text
    assert "pretrained eps=1 beats the twin with pixel on 2, ssim on 2, fused on 2." in text


def test_peer_predictions_are_scored_like_robust_ad(synth_root: Path) -> None:
    """raw_predict turns a peer's outputs into robust-ad's Prediction: maps resized to the images, scores kept."""
    import peers
    import torch

    class Peer(torch.nn.Module):
        pre_processor = None

        def model(self, x: torch.Tensor):  # scores the mean red value; maps at half resolution
            maps = x[:, :1, ::2, ::2]
            return type("Out", (), {"pred_score": x[:, 0].mean((1, 2)), "anomaly_map": maps})

    images = np.random.default_rng(0).random((20, 32, 32, 3), dtype=np.float32)
    prediction, ms, has_maps = peers.raw_predict(Peer(), images)
    assert has_maps and ms > 0
    assert prediction.maps.shape == (20, 32, 32)
    np.testing.assert_allclose(prediction.scores, images[..., 0].mean((1, 2)), rtol=1e-5)


@pytest.mark.slow
def test_peers_train_and_evaluate_with_anomalib(synth_root: Path) -> None:
    """Runs where the bench extra is installed: a peer trains on robust-ad's splits; a download-bound one is
    reported with its reason instead of failing the benchmark."""
    pytest.importorskip("anomalib")
    import peers

    from robust_ad.data.loading import load_split, open_dataset

    config = tiny_config(synth_root)
    dataset = open_dataset(config)
    sets = {split: load_split(dataset, split, config) for split in ("train", "val", "test")}
    settings = {"max_epochs": 1, "budget_minutes": 0.5, "models": ["Padim", "Stfpm"]}
    padim, stfpm = peers.run_peers({"bottle": sets}, settings, seed=0, quantile=0.99)
    assert 0 <= padim["image_auroc"] <= 1 and 0 <= padim["aupro"] <= 1 and 0 <= padim["f1"] <= 1
    assert padim["ms_per_image"] > 0
    assert "no network" in stfpm["error"]


def test_speed_script_writes_its_rows_after_every_group_and_stamps_the_command(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import speed  # benchmarks/speed.py

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU rows only, on any machine
    out = tmp_path / "speed.json"
    seen: list[int] = []
    real_rows = speed._rows

    def rows_then_look(*args, **kwargs):  # what the file holds when the next group starts
        seen.append(len(json.loads(out.read_text())["rows"]) if out.exists() else 0)
        return real_rows(*args, **kwargs)

    speed._rows = rows_then_look
    try:
        speed.main(["--run", str(tiny_run), "--sizes", "32", "--batches", "2", "1", "--out", str(out)])
    finally:
        speed._rows = real_rows
    written = json.loads(out.read_text())
    assert seen == [0, 3]  # the batch-2 rows were on disk before the batch-1 rows were measured
    assert [row["batch"] for row in written["rows"]] == [2, 2, 2, 1, 1, 1]
    assert written["command"].endswith(f"--out {out}") and written["date"]
    with pytest.raises(SystemExit, match="no CUDA device"):  # --gpu-only: the GPU rows alone, and there are none
        speed.main(["--run", str(tiny_run), "--gpu-only"])
