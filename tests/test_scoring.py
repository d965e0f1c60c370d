"""Anomaly maps, calibration, metrics, and the score / eval commands."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from typer.testing import CliRunner

from robust_ad import rundir
from robust_ad.cli import app
from robust_ad.config import DEFAULT_COMPONENTS
from robust_ad.data.arrays import ImageSet
from robust_ad.data.images import read_image
from robust_ad.data.layouts import Sample
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.errors import DataError, ModelError, counted
from robust_ad.models.folding import fold_batch_norms
from robust_ad.scoring import metrics
from robust_ad.scoring.calibration import calibrate, fit_colour_response, fit_normalisation
from robust_ad.scoring.evaluate import evaluate
from robust_ad.scoring.inference import Prediction, predict
from robust_ad.scoring.scorer import correct_colour
from robust_ad.tensors import to_tensor

runner = CliRunner()


def _normal_images(run: Path, split: str = "val") -> np.ndarray:
    config = rundir.read_config(run)
    return load_split(open_dataset(config), split, config).images


def test_maps_have_input_size_and_are_higher_inside_a_pasted_defect(tiny_run: Path) -> None:
    scorer = rundir.load_scorer(tiny_run)
    images = _normal_images(tiny_run, "train")[:4].copy()
    images[:, 10:18, 12:20] = [1.0, 0.0, 1.0]  # a magenta patch: nothing like the training images
    prediction = predict(scorer, images)
    assert prediction.maps.shape == images.shape[:3] and np.isfinite(prediction.maps).all()
    inside = prediction.maps[:, 10:18, 12:20].mean()
    outside = np.delete(
        prediction.maps.reshape(4, -1), np.ravel_multi_index(np.mgrid[10:18, 12:20].reshape(2, -1), (32, 32)), axis=1
    ).mean()
    assert inside > outside + 1.0  # in units of normal standard deviations
    big = predict(scorer, np.stack([cv2.resize(im, (48, 48)) for im in images]))
    assert big.maps.shape == (4, 48, 48)


def test_the_ssim_component_is_kornias_ssim_map(tiny_run: Path) -> None:
    """The scorer keeps SSIM's window as a buffer (no host-to-GPU copy per call) and computes kornia's map."""
    from kornia.metrics import ssim

    from robust_ad.scoring.scorer import AnomalyScorer

    config = rundir.read_config(tiny_run).scoring
    only_ssim = config.model_copy(update={"weights": {"ssim": 1.0}, "smoothing_sigma": 0.0})
    scorer = AnomalyScorer(rundir.load_model(tiny_run), only_ssim, 32).eval()
    x = torch.from_numpy(_normal_images(tiny_run, "train")[:4]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        maps, x_hat = scorer.component_maps(x)
        expected = 1 - ssim(x, x_hat, config.ssim_window).mean(1, keepdim=True)
    # the same formula rearranged (the variances summed before the means are subtracted): float32 rounding apart
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [32, 40])
def test_scoring_fuses_before_smoothing_yet_gives_the_calibrated_components_fused(tiny_run: Path, size: int) -> None:
    """forward weighs the component terms, resamples them once per resolution and smooths one channel; that must
    be the fusion of the smoothed components that calibration standardised (at the training size and another)."""
    scorer = rundir.load_scorer(tiny_run)
    scorer.config = scorer.config.model_copy(update={"score_fusion": "map"})  # the path that fuses first
    x = torch.from_numpy(_normal_images(tiny_run, "train")[:3]).permute(0, 3, 1, 2).contiguous()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    with torch.no_grad():
        maps, _ = scorer.component_maps(x)
        fused, _, raw, _ = scorer(x)
    assert scorer.components == list(DEFAULT_COMPONENTS) and scorer.config.smoothing_sigma > 0
    torch.testing.assert_close(fused, scorer.fuse(maps), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(raw, scorer.fuse(maps).flatten(1).amax(1), atol=1e-5, rtol=1e-5)


def test_the_image_score_is_the_largest_component_score_standardised_on_held_out_normals(tiny_run: Path) -> None:
    """score_fusion 'components' (the default): each component's map maximum, standardised by the calibration's
    statistics of the held-out normal images (where each then has mean 0, std 1), times its weight; the largest."""
    scorer, calibration = rundir.load_scorer(tiny_run), json.loads((tiny_run / rundir.CALIBRATION).read_text())
    assert scorer.config.score_fusion == calibration["score_fusion"] == "components"
    components = calibration["components"]
    images = _normal_images(tiny_run, "train")[:4].copy()
    images[:2, 10:18, 12:20] = [1.0, 0.0, 1.0]
    with torch.no_grad():
        maps, _ = scorer.component_maps(to_tensor(images))
        fused, _, raw, _ = scorer(to_tensor(images))
        normal = scorer.component_maps(to_tensor(_normal_images(tiny_run)))[0].flatten(2).amax(2)
    maxima = maps.flatten(2).amax(2)
    mean, std = (torch.tensor([components[c][key] for c in scorer.components]) for key in ("score_mean", "score_std"))
    weights = torch.tensor([components[c]["weight"] for c in scorer.components])
    torch.testing.assert_close(raw, ((maxima - mean) / std * weights).amax(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, scorer.fuse(maps), atol=1e-5, rtol=1e-5)  # the heat map: the fused map
    standardised = (normal - mean) / std
    torch.testing.assert_close(standardised.mean(0), torch.zeros(len(mean)), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0, correction=0), torch.ones(len(mean)), atol=1e-3, rtol=0)


def test_a_component_whose_normal_maxima_spread_widely_cannot_drown_one_that_sees_the_defect(tiny_run: Path) -> None:
    """Synthetic maps: component 0 is calm on most normal images and loud on a few (SSIM on a texture), component 1
    alone sees the defects (five of its pixel spreads). Fused in one map, component 0's loud normals outrank
    the defects; standardised component by component, the defects come first."""
    scorer = rundir.load_scorer(tiny_run)
    k = len(scorer.components)
    rng = np.random.default_rng(0)

    def normal(n: int) -> torch.Tensor:
        maps = rng.normal(0, 0.1, (n, k, 8, 8))
        maps[:, 0] *= np.where(rng.random(n) < 0.2, 30.0, 1.0)[:, None, None]  # loud on a fifth of the images
        return torch.tensor(maps, dtype=torch.float32)

    def auroc(fusion: str) -> float:
        scorer.config = scorer.config.model_copy(update={"score_fusion": fusion})
        fit_normalisation(scorer, normal(400))
        defects = normal(40)
        defects[:, 1, 4, 4] += 0.5
        scores = torch.cat([scorer.image_raw(normal(40)), scorer.image_raw(defects)])
        return roc_auc_score([0] * 40 + [1] * 40, scores.numpy())

    fused, per_component = auroc("map"), auroc("components")
    assert per_component > 0.95 and fused < 0.9


def test_runs_calibrated_before_score_fusion_existed_score_as_they_did(tiny_run: Path, tmp_path: Path) -> None:
    """A run folder written before score_fusion (no key in config.yaml, no component score statistics in
    calibration.json) loads with the fused-map score it was calibrated for."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    config = yaml.safe_load((old / rundir.CONFIG).read_text())
    del config["scoring"]["score_fusion"]
    (old / rundir.CONFIG).write_text(yaml.safe_dump(config))
    calibration = json.loads((old / rundir.CALIBRATION).read_text())
    del calibration["score_fusion"]
    for component in calibration["components"].values():
        del component["score_mean"], component["score_std"]
    (old / rundir.CALIBRATION).write_text(json.dumps(calibration))
    scorer = rundir.load_scorer(old)
    assert scorer.config.score_fusion == "map"
    x = to_tensor(_normal_images(tiny_run, "train")[:2])
    with torch.no_grad():
        fused, _, raw, _ = scorer(x)
    torch.testing.assert_close(raw, fused.flatten(1).amax(1))
    config["scoring"]["score_fusion"] = "components"  # asked for, yet not calibrated for: refused in one line
    (old / rundir.CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match="calibrated with score_fusion 'map', configured 'components'"):
        rundir.load_scorer(old)
    new = tmp_path / "new"  # and the other way round: the score statistics are of the other score
    shutil.copytree(tiny_run, new)
    config["scoring"]["score_fusion"] = "map"
    (new / rundir.CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match="calibrated with score_fusion 'components', configured 'map'"):
        rundir.load_scorer(new)
    calibration["score_fusion"] = "components"  # a hand-edited file: said, yet without the statistics
    (old / rundir.CALIBRATION).write_text(json.dumps(calibration))
    message = r"calibration.json: score_fusion 'components' without the score statistics of pixel, ssim, feature, m"
    with pytest.raises(ModelError, match=message):
        rundir.read_calibration(old)


def test_smoothing_is_the_gaussian_blur_with_reflected_borders() -> None:
    from kornia.filters import gaussian_blur2d

    from robust_ad.scoring.scorer import smoothing_matrix

    maps = torch.rand(2, 3, 30, 23, generator=torch.Generator().manual_seed(0))
    rows, cols = (
        smoothing_matrix(30, 2.5, 8, maps.device, maps.dtype),
        smoothing_matrix(23, 2.5, 8, maps.device, maps.dtype),
    )
    expected = gaussian_blur2d(maps, (17, 17), (2.5, 2.5), border_type="reflect")
    torch.testing.assert_close(rows.T @ maps @ cols, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(8, 6), (30, 23), (61, 47)])  # up, the same size, down
def test_resampling_matrix_is_bilinear_resizing_then_the_gaussian_blur(shape: tuple[int, int]) -> None:
    from kornia.filters import gaussian_blur2d

    from robust_ad.scoring.scorer import resampling_matrix

    maps = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    resized = F.interpolate(maps, size=(30, 23), mode="bilinear", align_corners=False)
    blurred = gaussian_blur2d(resized, (17, 17), (2.5, 2.5), border_type="reflect")
    for sigma, radius, expected in ((2.5, 8, blurred), (0.0, 0, resized)):
        rows, cols = (
            resampling_matrix(n, m, sigma, radius, maps.device, maps.dtype)
            for n, m in zip(shape, (30, 23), strict=True)
        )
        torch.testing.assert_close(rows.T @ (maps @ cols), expected, atol=1e-5, rtol=0)  # float32 rounding


def test_each_component_map_is_the_mean_of_its_terms_resized_then_blurred(tiny_run: Path) -> None:
    from kornia.filters import gaussian_blur2d

    scorer = rundir.load_scorer(tiny_run)
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps, _ = scorer.component_maps(x)
        terms, _ = scorer._terms(x)
    sigma = scorer.config.smoothing_sigma * 48 / scorer.train_size
    side = 2 * min(math.ceil(3 * sigma), (40 - 1) // 2) + 1
    assert len({m.shape[-2:] for name in scorer.components for m in terms[name]}) > 2  # terms of several sizes
    for k, name in enumerate(scorer.components):
        resized = [F.interpolate(m, size=(40, 48), mode="bilinear", align_corners=False) for m in terms[name]]
        expected = gaussian_blur2d(torch.stack(resized).mean(0), (side, side), (sigma, sigma), border_type="reflect")
        torch.testing.assert_close(maps[:, k : k + 1], expected, atol=1e-5, rtol=1e-4, msg=name)


def test_memory_resampled_once_for_a_fixed_size_scores_as_resampling_per_call(tiny_run: Path) -> None:
    scorer, fixed = rundir.load_scorer(tiny_run), rundir.load_scorer(tiny_run)
    stored = {k: v.clone() for k, v in fixed.state_dict().items()}
    fixed.resample_memory((48, 40))
    assert fixed.resampled_mean_layer1.shape[-2:] != scorer.memory_mean_layer1.shape[-2:]
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fixed(x)[0], scorer(x)[0], atol=1e-5, rtol=1e-5)
        # the stored statistics are untouched: what is saved, and what another size resamples from
        torch.testing.assert_close(fixed.state_dict(), stored, atol=0, rtol=0)
        other = torch.rand(2, 3, 32, 56, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(fixed(other)[0], scorer(other)[0], atol=1e-5, rtol=1e-5)
    fixed.load_memory(scorer.memory_statistics())  # new statistics: the resampled ones go with the old
    assert not any(name.startswith("resampled_") for name, _ in fixed.named_buffers())


def test_calibration_threshold_is_the_documented_quantile_of_normal_scores(tiny_run: Path) -> None:
    calibration = json.loads((tiny_run / rundir.CALIBRATION).read_text())
    config = rundir.read_config(tiny_run)
    scores = predict(rundir.load_scorer(tiny_run), _normal_images(tiny_run)).scores
    np.testing.assert_allclose(scores, calibration["normal_scores"], atol=1e-4)
    assert abs(np.mean(scores)) < 1e-4 and abs(np.std(scores) - 1) < 1e-3  # standardised on these images
    expected = np.quantile(scores, config.scoring.threshold_quantile)
    assert calibration["threshold"] == pytest.approx(expected, abs=1e-4)


def _random_evaluation(seed: int, masked=lambda i, defect: True) -> tuple[ImageSet, Prediction, np.ndarray]:
    """Random maps and scores; defect image i of type ``defect`` has a mask file when ``masked(i, defect)``."""
    rng = np.random.default_rng(seed)
    n = 12
    labels = np.array([0] * 6 + [1] * 6)
    masks = np.zeros((n, 16, 16), bool)
    for i in range(6, n):
        y, x = rng.integers(0, 10, 2)
        masks[i, y : y + 5, x : x + 4] = True
    maps = rng.random((n, 16, 16)) + masks * rng.random() * 0.8
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.1, n)
    types = ["good" if label == 0 else ("a" if i % 2 else "b") for i, label in enumerate(labels)]
    samples = [
        Sample(Path(f"{i}.png"), int(label), t, Path(f"{i}_mask.png") if label and masked(i, t) else None)
        for i, (label, t) in enumerate(zip(labels, types, strict=True))
    ]
    test = ImageSet(np.zeros((n, 16, 16, 3), np.float32), masks, labels, samples, np.full((n, 2), 16))
    return test, Prediction(maps, scores, scores, np.zeros((n, 16, 16, 3))), masks


def _naive_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """Reference: loop over every distinct threshold, label regions with OpenCV, integrate with np.interp."""
    points = []
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fpr = predicted[~masks].mean()
        overlaps = []
        for mask, pred in zip(masks, predicted, strict=True):
            count, labelled = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            overlaps += [pred[labelled == r].mean() for r in range(1, count)]
        points.append((fpr, np.mean(overlaps)))
        if fpr > limit:
            break
    fpr, pro = np.array([(0.0, 0.0), *points]).T
    grid = np.linspace(0, limit, 3001)
    return float(np.trapezoid(np.interp(grid, fpr, pro), grid) / limit)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn_and_a_reference_aupro(seed: int) -> None:
    test, prediction, masks = _random_evaluation(seed)
    result = evaluate(test, prediction, 0.9)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(test.labels, prediction.scores))
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.reshape(-1), prediction.maps.reshape(-1)))
    assert result["f1"] == pytest.approx(f1_score(test.labels, prediction.scores > 0.9))
    assert result["aupro"] == pytest.approx(_naive_aupro(masks, prediction.maps), abs=0.01)
    assert set(result["per_defect_type"]) == {"a", "b"}
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1"):
        assert 0 <= result[key] <= 1


def test_aupro_of_maps_with_ties_closes_its_curve_on_the_line_to_the_next_point() -> None:
    """Quantised maps leave few thresholds: the curve was held flat from the last point under the limit (0.570
    against the reference's 0.581 in review)."""
    for seed in (0, 1, 2):
        _, prediction, masks = _random_evaluation(seed)
        tied = np.round(prediction.maps * 3) / 3
        assert metrics.aupro(masks, tied) == pytest.approx(_naive_aupro(masks, tied), abs=1e-3)


def test_the_best_f1_threshold_lies_halfway_between_the_classes() -> None:
    """It was one float step under the weakest detected defect: scored a rounding step lower by onnxruntime or on a
    GPU, that defect came out normal."""
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.3, 0.9, 0.2, 175.7, 1.0], np.float32)
    f1, threshold = metrics.best_f1(labels, scores)
    assert f1 == 1.0 and threshold == pytest.approx(0.6)
    assert f1_score(labels, scores > threshold) == f1
    overlapping = np.array([0.1, 0.95, 0.9, 0.2, 2.0, 1.0], np.float32)  # a normal part above one defect
    f1, threshold = metrics.best_f1(labels, overlapping)
    assert f1_score(labels, overlapping > threshold) == pytest.approx(f1) and 0.2 < threshold < 0.9


def test_a_roc_figure_without_normal_test_images_says_so_without_a_warning(tmp_path: Path) -> None:
    """A test split without test/good drew no curve, and matplotlib's legend warning leaked into eval's output."""
    import warnings

    from robust_ad.report import roc_figure

    n = 3
    samples = [Sample(tmp_path / f"{i}.png", 1, "hole") for i in range(n)]
    test = ImageSet(np.zeros((n, 8, 8, 3)), np.zeros((n, 8, 8), bool), np.ones(n, int), samples, np.full((n, 2), 8))
    prediction = Prediction(np.zeros((n, 8, 8)), np.arange(n, dtype=float), np.arange(n, dtype=float), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert roc_figure(tmp_path / "roc.png", test, prediction, "t").is_file()


def test_the_report_shows_how_many_it_left_out_and_outlines_the_true_defect(tmp_path: Path) -> None:
    """A user trial: 'Worst false negatives (6)' where there were 14; overlays at the model's 32 px shown 480 px wide
    (a blur), without the ground truth to judge the heat map by."""
    from robust_ad.report import html_report

    n = 8
    masks = np.zeros((n, 32, 32), bool)
    masks[:, 10:20, 10:20] = True
    samples = [Sample(tmp_path / f"{i}.png", 1, "hole") for i in range(n)]
    test = ImageSet(np.full((n, 32, 32, 3), 0.5, np.float32), masks, np.ones(n, int), samples, np.full((n, 2), 32))
    missed = Prediction(np.zeros((n, 32, 32), np.float32), np.zeros(n), np.zeros(n), None)  # every defect missed
    metrics = {"threshold": 1.0, "per_defect_type": {}, **dict.fromkeys(["image_auroc", "pixel_auroc", "aupro"])}
    metrics |= {"f1": 0.0, "recall": 0.0, "false_positive_rate": None, "f1_max": None}
    page = html_report(tmp_path, metrics, test, missed, vmax=1.0).read_text()
    assert "False negatives (the 6 worst of 8)" in page and "False positives (0)" in page
    picture = read_image(next((tmp_path / "overlays").iterdir()))
    assert picture.shape[1] == 3 * 256  # each panel at a readable size
    green = (picture[..., 1] > 0.9) & (picture[..., 0] < 0.1) & (picture[..., 2] < 0.1)
    assert green.sum() > 3 * 4 * 60  # the mask's outline on each panel


def test_pixel_metrics_are_null_without_masks() -> None:
    test, prediction, _ = _random_evaluation(0, lambda i, defect: defect == "b")
    result = evaluate(test, prediction, 0.9)
    assert result["per_defect_type"]["a"]["pixel_auroc"] is None and result["per_defect_type"]["a"]["aupro"] is None
    assert result["per_defect_type"]["b"]["pixel_auroc"] is not None
    assert result["pixel_auroc"] is not None  # computed on the images that have masks
    assert result["n_without_mask"] == 3 and result["per_defect_type"]["a"]["n_without_mask"] == 3
    test, prediction, _ = _random_evaluation(0, lambda i, defect: False)
    none = evaluate(test, prediction, 0.9)
    assert none["pixel_auroc"] is None and none["aupro"] is None and none["image_auroc"] is not None


def test_a_type_with_some_masks_missing_is_measured_on_those_that_have_one() -> None:
    test, prediction, masks = _random_evaluation(1, lambda i, defect: i != 7)  # image 7 (type 'a') has no mask
    result = evaluate(test, prediction, 0.9)["per_defect_type"]["a"]
    keep = np.array([s.label == 0 or (s.defect_type == "a" and s.mask_path is not None) for s in test.samples])
    assert result["n_without_mask"] == 1 and result["n"] == 3
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks[keep].reshape(-1), prediction.maps[keep].ravel()))


def test_aupro_perfect_and_random() -> None:
    masks = np.zeros((3, 20, 20), bool)
    masks[1, 3:9, 3:9] = True
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    many = np.zeros((30, 20, 20), bool)
    many[1::2, 3:9, 3:9] = True  # enough regions for a random map to sit near the chance level 0.15
    assert metrics.aupro(many, np.random.default_rng(0).random(many.shape)) == pytest.approx(0.15, abs=0.02)


def test_score_cli_reports_corrupt_file_and_scores_the_rest(tiny_run: Path, synth_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    for source in sorted((synth_root / "bottle" / "test" / "hole").iterdir())[:3]:
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "moved.png").symlink_to(tmp_path / "gone.png")  # a user trial: a broken link was passed over silently
    out = tmp_path / "results"
    result = runner.invoke(app, ["score", str(folder), "--model", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert "broken.png" in result.output and "moved.png" in result.output
    rows = list(csv.DictReader((out / "scores.csv").open()))  # every input, in order: a line system sees the gap
    assert list(rows[0]) == ["path", "raw_score", "normalized_score", "verdict", "error", "overlay"] and len(rows) == 5
    assert [Path(r["path"]).name for r in rows] == sorted([*before, "moved.png"])
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert broken["verdict"] == "unreadable" and broken["raw_score"] == "" and "broken.png" in broken["error"]
    moved = next(r for r in rows if r["path"].endswith("moved.png"))
    assert moved["verdict"] == "unreadable" and "cannot open" in moved["error"]
    assert {r["verdict"] for r in rows if r not in (broken, moved)} <= {"normal", "anomalous"}
    assert len(list((out / "overlays").iterdir())) == 3
    assert json.loads((out / "scores.json").read_text())["errors"][0]["path"].endswith("broken.png")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.exists()} == before  # inputs untouched
    again = runner.invoke(app, ["score", str(folder / "*.png"), "--model", str(tiny_run), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    strict = runner.invoke(
        app,
        [
            "score",
            str(folder / "0*.png"),
            "--model",
            str(tiny_run),
            "--out",
            str(out),
            "--force",
            "--threshold",
            "-1000",
            "--fail-on-anomaly",
        ],
    )
    assert strict.exit_code == 1, strict.output


def test_score_cli_errors_are_one_line(tiny_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", str(tmp_path / "nothing"), "--model", str(tiny_run)])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    (tmp_path / "a.png").write_bytes(b"x")
    result = runner.invoke(app, ["score", str(tmp_path), "--model", str(tmp_path)])
    assert result.exit_code == 2 and "not a robust-ad run folder" in result.output
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    (fake / "model.pt").write_bytes(b"garbage")
    result = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--model", str(fake)])
    assert result.exit_code == 2 and "corrupt or not a robust-ad checkpoint" in result.output
    torch.save({"format": "something else"}, fake / "model.pt")
    result = runner.invoke(app, ["score", str(tmp_path / "a.png"), "--model", str(fake)])
    assert result.exit_code == 2 and "not a robust-ad model file" in result.output


def test_eval_cli_writes_metrics_report_and_roc(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    model_files = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    result = runner.invoke(app, ["eval", "--category", "bottle", "--model", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1"):
        assert 0 <= saved[key] <= 1
    assert set(saved["per_defect_type"]) == {"scratch", "hole", "contamination", "color", "deformed"}
    assert (out / "roc.png").stat().st_size > 0 and "<html>" in (out / "report.html").read_text()
    assert (
        f"<th>false_positive_rate</th><td>{saved['false_positive_rate']:.3f}</td>" in (out / "report.html").read_text()
    )
    assert saved["f1_max_threshold"] is not None and "optimistic" in saved["f1_max_threshold_rule"]
    assert f"normal test images flagged at the threshold: {saved['false_positive_rate']:.1%}" in result.output
    baseline = ["eval", "--model", str(tiny_run), "--baseline", str(tiny_run), "--out", str(tmp_path / "e2")]
    result = runner.invoke(app, baseline)  # it was ignored: the report compared nothing
    assert result.exit_code == 2 and "--baseline compares denoisers (--mode denoise)" in result.output
    rows = list(csv.DictReader((out / "scores.csv").open()))  # per test image: which parts were missed or flagged
    assert len(rows) == saved["n_normal"] + saved["n_anomalous"]
    flagged = [float(r["normalized_score"]) > saved["threshold"] for r in rows]
    assert [r["verdict"] == "anomalous" for r in rows] == flagged
    truth = [r["label"] == "1" for r in rows]
    assert [r["correct"] == "True" for r in rows] == [f == t for f, t in zip(flagged, truth, strict=True)]
    normal = [f for f, r in zip(flagged, rows, strict=True) if r["label"] == "0"]
    assert sum(normal) / len(normal) == pytest.approx(saved["false_positive_rate"])
    # eval writes into its own --out only: the deployed model's files stay as they are
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == model_files


def test_force_never_clears_a_folder_holding_inputs_data_or_model(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    line = tmp_path / "line" / "today"
    line.mkdir(parents=True)
    image = line / "a.png"
    image.write_bytes((synth_root / "bottle" / "test" / "good" / "000.png").read_bytes())
    for out in (line, tmp_path / "line", tiny_run):  # the input folder, its parent, the model folder
        result = runner.invoke(app, ["score", str(image), "--model", str(tiny_run), "--out", str(out), "--force"])
        assert result.exit_code == 2 and "inputs and models are never overwritten" in result.output, out
        kind = "the model" if out == tiny_run else "the input"  # said for what it is
        assert f"overlaps {kind} " in " ".join(result.output.split()), out
    assert image.is_file() and (tiny_run / rundir.MODEL).is_file()
    result = runner.invoke(app, ["eval", "--model", str(tiny_run), "--out", str(synth_root), "--force"])
    assert result.exit_code == 2 and "inputs and models are never overwritten" in result.output
    before = sorted(synth_root.rglob("*.png"))
    category = synth_root / "bottle"
    for out in (synth_root, category, category / "train", category / "test", category / "test" / "new"):
        result = runner.invoke(
            app, ["train", "--category", "bottle", "--data-root", str(synth_root), "--out", str(out), "--force"]
        )
        assert result.exit_code == 2 and "inputs and models are never overwritten" in result.output, out
    assert sorted(synth_root.rglob("*.png")) == before and not (category / "test" / "new").exists()


def test_a_failed_cuda_graph_capture_falls_back_to_eager_once(monkeypatch, caplog) -> None:
    from robust_ad.cuda_graphs import GraphedForward

    module = torch.nn.Linear(4, 2)
    forward = GraphedForward(module)
    attempts = []

    def refuse(x: torch.Tensor) -> None:
        attempts.append(x.shape)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(forward, "_capture", refuse)
    x = torch.rand(3, 4)
    with caplog.at_level("WARNING"):
        first, second = forward(x), forward(x)
    with torch.no_grad():
        torch.testing.assert_close(first[0], module(x))
    torch.testing.assert_close(second[0], first[0])
    assert forward.failed and len(attempts) == 1 and "capture failed" in caplog.text


def test_predict_folds_batch_norms_into_the_convolutions_and_scores_as_before(tiny_run: Path) -> None:
    scorer = rundir.load_scorer(tiny_run).eval()
    images = _normal_images(tiny_run)[:4]
    with torch.no_grad():
        reference = scorer(to_tensor(images))
    networks = (scorer.model.encoder, scorer.model.decoder)
    assert all(any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) for net in networks)
    prediction = predict(scorer, images)
    assert not any(isinstance(m, nn.BatchNorm2d) for net in networks for m in net.modules())
    np.testing.assert_allclose(prediction.scores, reference[1].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prediction.maps, reference[0].numpy(), rtol=1e-4, atol=1e-3)
    assert fold_batch_norms(scorer.model) == 0  # already folded


def test_folding_keeps_every_feature_layer_the_same() -> None:
    """conv1 as a feature layer: folding bn1 into it made 'conv1' the batch norm's output, so scoring compared
    features unlike the calibrated ones."""
    from robust_ad.models.encoder import Encoder

    encoder = Encoder("resnet18", "layer1", ["conv1", "layer1"], width=0.25)
    encoder.train()
    with torch.no_grad():
        for _ in range(3):  # batch norm statistics far from the identity
            encoder(torch.rand(4, 3, 32, 32) * 3)
    images = torch.rand(2, 3, 32, 32)
    before = encoder.eval().features(images)
    assert fold_batch_norms(encoder) > 0  # the blocks' batch norms still fold
    after = encoder.features(images)
    for name in ("conv1", "bn1", "layer1"):
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-4, msg=name)


def test_colour_response_is_the_least_squares_map_and_falls_back_to_the_cast() -> None:
    rng = np.random.default_rng(0)
    image = torch.tensor(rng.uniform(0.3, 0.7, (50, 3)))
    mixing = torch.tensor([[1.4, 0.2, 0.0], [0.0, 0.9, 0.1], [-0.1, 0.0, 1.2]], dtype=torch.float64)
    reconstructed = (image - 0.5) @ mixing.T + 0.5 + 0.03  # exaggerates and mixes each image's colour, and casts
    matrix, offset = fit_colour_response(torch.stack([image, reconstructed], 1))
    corrected = reconstructed.float() @ matrix.T - offset
    torch.testing.assert_close(corrected, image.float(), rtol=0, atol=2e-3)  # the ridge costs a little
    torch.testing.assert_close(matrix, torch.linalg.inv(mixing).float(), rtol=0, atol=0.02)
    flat = torch.stack([image, torch.full_like(image, 0.6)], 1)  # no spread to measure a response on: the cast
    matrix, offset = fit_colour_response(flat)
    torch.testing.assert_close(matrix, torch.eye(3))
    torch.testing.assert_close(offset, (0.6 - image.mean(0)).float())
    x_hat = torch.full((2, 3, 4, 4), 0.5)
    x_hat[1] += 0.1
    out = correct_colour(x_hat, torch.tensor([[0.5, 0, 0], [0, 1.0, 0], [0.5, 0, 1.0]]), torch.tensor([0, 0.1, 0.5]))
    means = out.mean((2, 3))
    torch.testing.assert_close(means[1] - means[0], torch.tensor([0.05, 0.1, 0.15]))  # the matrix on each mean


def test_calibration_fits_the_decoders_colour_response_and_scoring_applies_it(tiny_run: Path) -> None:
    scorer = rundir.load_scorer(tiny_run)
    train = to_tensor(_normal_images(tiny_run, "train"))
    train = train * torch.linspace(0.2, 0.8, len(train)).view(-1, 1, 1, 1)  # brightness spread over many levels
    seen = []  # a decoder that returns its input 1.2 times as bright, and a cast (nothing clamped at 1)
    features = scorer.model.features
    scorer.model.features = lambda x: seen.append(x) or features(x)
    scorer.model.decoder.forward = lambda f, size: 1.2 * seen[-1] + 0.02
    record = calibrate(scorer, train.split(8), _normal_images(tiny_run))
    matrix = torch.tensor(record["colour_matrix"])
    step = train[-1].mean((1, 2)) - train[0].mean((1, 2))  # the one direction the images' colours vary in
    torch.testing.assert_close(matrix @ step, step / 1.2, rtol=0.02, atol=0)
    with torch.no_grad():  # scoring corrects each reconstruction's mean colour to its image's
        x_hat = scorer(train[:8])[3]
    torch.testing.assert_close(x_hat.mean((2, 3)), train[:8].mean((2, 3)), rtol=0, atol=2e-3)


def test_only_a_batch_norm_fed_by_a_convolution_is_folded() -> None:
    direct = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    apart = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    for net in (direct, apart):
        net[-1 if net is apart else 1].running_mean.uniform_(-1, 1)
        net[-1 if net is apart else 1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    for net, expected in ((direct, 1), (apart, 0)):
        before = net.eval()(x)
        assert fold_batch_norms(net) == expected
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


def test_calibration_fits_the_decoders_colour_cast_and_scoring_removes_it(tiny_run: Path, tmp_path: Path) -> None:
    scorer = rundir.load_scorer(tiny_run)
    with torch.no_grad():  # a decoder with a strong cast: redder and less blue than its inputs
        scorer.model.decoder.body[-1].bias += torch.tensor([1.0, 0.0, -1.0])
    train = to_tensor(_normal_images(tiny_run, "train"))
    calibrate(scorer, train.split(8), _normal_images(tiny_run))
    with torch.no_grad():
        cast = (scorer.model(train) - train).mean((0, 2, 3))
        left = (scorer(train)[3] - train).mean((0, 2, 3))
    assert cast[0] > 0.05 and cast[2] < -0.05
    assert left.abs().max() < 0.01  # what the clamp to [0, 1] leaves
    scorer.config = scorer.config.model_copy(update={"remove_colour_cast": False})  # the recipe's opt-out
    assert calibrate(scorer, train.split(8), _normal_images(tiny_run))["colour_offset"] == [0.0, 0.0, 0.0]
    old = tmp_path / "old-run"  # a calibration written before the cast was fitted: none removed
    shutil.copytree(tiny_run, old)
    calibration = json.loads((old / rundir.CALIBRATION).read_text())
    del calibration["colour_offset"], calibration["colour_matrix"]
    (old / rundir.CALIBRATION).write_text(json.dumps(calibration))
    assert rundir.load_scorer(old).colour_offset.abs().max() == 0
    assert torch.equal(rundir.load_scorer(old).colour_matrix, torch.eye(3))


def test_torch_scoring_warns_of_frames_smaller_than_the_model(
    tiny_run: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    image = read_image(synth_root / "bottle" / "test" / "good" / "000.png")
    cv2.imwrite(str(small / "thumb.png"), cv2.resize((image * 255).astype(np.uint8)[..., ::-1], (20, 20)))
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, ["score", str(small), "--model", str(tiny_run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0 and "input frames of 20x20 px are smaller than the model's 32x32" in caplog.text


def test_a_heat_map_far_above_vmax_still_shows_where() -> None:
    """A uniform product's defect scored 1e5 normal standard deviations, its neighbourhood 30: both were clipped to
    red, and the map showed no place. Below vmax the scale stays fixed (maps of two images compare)."""
    from robust_ad.viz import heatmap

    values = np.full((16, 16), 0.5, np.float32)
    values[4:12, 4:12] = 30.0
    values[7:9, 7:9] = 1e5
    heat = heatmap(values, vmax=2.0)
    spot, ring, calm = heat[8, 8], heat[5, 5], heat[0, 0]
    assert spot[0] > 0.4 and spot[1] < 0.1 and spot[2] < 0.1  # the defect red
    assert np.abs(spot - ring).max() > 0.3  # its neighbourhood another colour
    np.testing.assert_allclose(calm, heatmap(np.full((2, 2), 0.5, np.float32), vmax=2.0)[0, 0])
    assert np.isfinite(heatmap(np.full((2, 2), np.nan, np.float32), vmax=2.0)).all()
    np.testing.assert_allclose(heatmap(np.array([[0.5, np.inf]], np.float32), vmax=2.0)[0, 1], spot)  # red, as before


def test_score_overlays_say_the_verdict_and_score_above_the_panels(
    tiny_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad.viz import overlay

    image, heat = np.full((32, 32, 3), 0.5, np.float32), np.zeros((32, 32), np.float32)
    plain, normal, anomalous = (overlay(image, heat, 1.0, c) for c in (None, "normal 0.10", "anomalous 9.00"))
    assert plain.shape == (32, 96, 3) and normal.shape == anomalous.shape == (32 + 14, 96, 3)
    np.testing.assert_array_equal(normal[14:], plain)  # the panels are untouched below the strip
    red, green = (strip[:14].reshape(-1, 3).max(0) for strip in (anomalous, normal))
    assert red[0] > red[1] and green[1] > green[0]  # red text for anomalous, green for normal
    tall = overlay(np.full((200, 12, 3), 0.5, np.float32), np.zeros((200, 12), np.float32), 1.0, "anomalous 12.34")
    np.testing.assert_allclose(tall[:20, -3:], 30 / 255)  # a narrow frame's caption is shrunk to fit its strip
    out = tmp_path / "results"
    folder = synth_root / "bottle" / "test" / "hole"
    assert runner.invoke(app, ["score", str(folder), "--model", str(tiny_run), "--out", str(out)]).exit_code == 0
    written = read_image(next((out / "overlays").iterdir()))  # a small frame enlarged to be seen: 256 px panels
    assert written.shape[:2] == (256 + 25, 3 * 256)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert all((out / row["overlay"]).is_file() for row in rows)
    camera = tmp_path / "camera"
    camera.mkdir()
    cv2.imwrite(str(camera / "frame.png"), cv2.resize(cv2.imread(str(next(folder.iterdir()))), (1500, 1200)))
    frames = ["score", str(camera), "--model", str(tiny_run)]
    assert runner.invoke(app, [*frames, "--out", str(tmp_path / "r2")]).exit_code == 0
    written = read_image(next((tmp_path / "r2" / "overlays").iterdir()))  # panels of 1024 px at most (4500 before)
    assert written.shape[:2] == (819 + 81, 3 * 1024)
    assert runner.invoke(app, [*frames, "--out", str(tmp_path / "r3"), "--no-overlays"]).exit_code == 0
    assert not (tmp_path / "r3" / "overlays").exists() and (tmp_path / "r3" / "scores.csv").is_file()


def test_a_full_disk_leaves_neither_score_file_and_names_the_file(
    tiny_run: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while scores.json was written left scores.csv complete beside no scores.json (a supervisor
    looking for scores.csv took it as done), and the error named no file."""
    import errno

    plain = Path.write_text

    def full_disk(self: Path, text: str, *args, **kwargs):
        if self.name.startswith(".scores.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return plain(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    out = tmp_path / "results"
    folder = synth_root / "bottle" / "test" / "hole"
    result = runner.invoke(app, ["score", str(folder), "--model", str(tiny_run), "--out", str(out), "--no-overlays"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: No space left on device ({out / 'scores.json'})"
    ]
    assert not list(out.glob("*scores*")) and not list(out.glob(".scores*"))


def test_no_single_input_stops_a_batch(
    tiny_run: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user trial on a 24/7 line: each of these stopped the whole batch with no verdict for any frame (exit 2 or
    4), or went unaccounted with exit 0. Each is now an 'unreadable' row, the rest scored, exit 3."""
    import os
    import struct
    import zlib

    folder = tmp_path / "line"
    folder.mkdir()
    good = sorted((synth_root / "bottle" / "test" / "good").iterdir())[0]
    shutil.copy(good, folder / "a.png")
    shutil.copy(good, os.fsencode(folder) + b"/b_\xe9.png")  # a name that is not UTF-8
    shutil.copy(good, folder / f"c{'x' * 230}.png")  # a long name: its overlay's temporary ran past 255 bytes
    (folder / "d.png").symlink_to(folder / "d.png")  # a link loop
    frame = read_image(good)
    nan = frame.copy()
    nan[3, 3, 0] = np.nan
    cv2.imwrite(str(folder / "e.tif"), nan[:, :, ::-1])
    cv2.imwrite(str(folder / "f.tif"), frame[:, :, ::-1] * 255)  # float in 0-255: it was clipped to white, scored
    with (folder / "g.tif").open("wb") as huge:  # over 2 GiB (sparse): OpenCV takes no more, read whole before
        huge.truncate(2**31 + 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 30000, 8, 0, 0, 0, 0)  # a gigapixel grey PNG in 100 bytes
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    (folder / "h.png").write_bytes(png + chunk(b"IEND", b""))
    (folder / "locked").mkdir()
    shutil.copy(good, folder / "locked" / "i.png")
    scandir = os.scandir

    def refused(path):  # a camera's folder without read permission (root reads it anyway)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    out = tmp_path / "results"
    result = runner.invoke(app, ["score", str(folder), "--model", str(tiny_run), "--out", str(out)])
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    rows = list(csv.DictReader((out / "scores.csv").open(encoding="utf-8", errors="surrogateescape")))
    verdicts = {Path(r["path"]).name[:2]: r["verdict"] for r in rows}
    assert len(rows) == 9 and all(verdicts[name] != "unreadable" for name in ("a.", "b_", "cx")), verdicts
    assert all(verdicts[name] == "unreadable" for name in ("d.", "e.", "f.", "g.", "h.", "lo")), verdicts
    assert sum(bool(r["overlay"]) for r in rows) == 3


def test_a_stopped_score_writes_the_verdicts_it_has(tmp_path: Path) -> None:
    """A service stop (SIGTERM) or Ctrl-C during a long batch left overlays and no scores at all."""
    from robust_ad.scoring.files import score_files
    from tests.conftest import make_image

    files = [make_image(tmp_path / "in" / f"{i}.png", seed=i) for i in range(5)]
    calls = []

    def predictor(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise SystemExit(143)  # as the SIGTERM handler stops it
        n = len(images)
        return np.zeros((n, 8, 8), np.float32), np.full(n, 0.5), np.full(n, 0.1)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit):
        score_files(files, predictor, threshold=1.0, out=out, vmax=1.0, batch_size=2, overlays=False)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["verdict"] for r in rows] == ["normal", "normal", "not scored", "not scored", "not scored"]
    assert json.loads((out / "scores.json").read_text())["stopped"] is True


def test_calibration_says_what_it_calibrated_on_and_warns_of_a_handful(
    tiny_run: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    from robust_ad.api import train
    from robust_ad.scoring.calibration import calibrate
    from robust_ad.tensors import to_tensor
    from tests.conftest import tiny_config

    with caplog.at_level("WARNING"):
        run = train(tiny_config(synth_root, data={"val_fraction": 0.0}), tmp_path / "run")
    rule = rundir.read_calibration(run).threshold_rule
    assert rule.endswith("normal training images (none held out)") and "held-out normal" not in rule
    assert "no held-out normal images" in caplog.text and "unreliable" not in caplog.text  # 16 training images
    images = _normal_images(tiny_run)[:3]
    with caplog.at_level("WARNING"):
        calibrate(rundir.load_scorer(tiny_run), to_tensor(images).split(2), images)
    assert "calibrating on 3 normal images: the normalisation and threshold are unreliable below 5" in caplog.text


def test_a_camera_switched_between_colour_and_mono_is_warned_of(
    tiny_run: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    from robust_ad.api import train
    from robust_ad.runtime import InferenceSession
    from tests.conftest import tiny_config

    assert rundir.read_calibration(tiny_run).train_channel_spread > 0.1
    grey_root = tmp_path / "grey"  # the same category from a monochrome camera
    for path in (synth_root / "bottle").rglob("*.png"):
        target = grey_root / "bottle" / path.relative_to(synth_root / "bottle")
        target.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(target), image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    run = train(tiny_config(grey_root), tmp_path / "run")
    assert rundir.read_calibration(run).train_channel_spread == 0
    colour = str(synth_root / "bottle" / "test" / "good")
    with caplog.at_level("WARNING"):
        assert runner.invoke(app, ["score", colour, "--model", str(run), "--out", str(tmp_path / "s")]).exit_code == 0
    said = [r.message for r in caplog.records if "camera mode" in r.message]
    assert len(said) == 1 and "frames are colour but the model was trained on grey (monochrome) images" in said[0]
    assert runner.invoke(app, ["export", "--model", str(run)]).exit_code == 0
    caplog.clear()
    with caplog.at_level("WARNING"):
        InferenceSession(run / "model.onnx", device="cpu").predict(_normal_images(tiny_run))
    assert "frames are colour but the model was trained on grey" in caplog.text
    caplog.clear()
    onnx_file = tmp_path / "colour.onnx"
    assert runner.invoke(app, ["export", "--model", str(tiny_run), "--out", str(onnx_file)]).exit_code == 0
    with caplog.at_level("WARNING"):  # grey frames for a colour model: said too, also after colour frames of that size
        mixed = _normal_images(tiny_run)[:2]
        mixed[1] = mixed[1].mean(axis=2, keepdims=True)
        InferenceSession(onnx_file, device="cpu").predict(mixed)
    assert "frames are grey but the model was trained on colour images" in caplog.text


def test_a_camera_whose_light_changed_is_warned_of(tiny_run: Path, tmp_path: Path, caplog) -> None:
    """A user trial: a new camera's gain (x1.4, x0.6) or tint made every part anomalous with no hint why."""
    from robust_ad.api import predict

    normal = _normal_images(tiny_run)
    low, high = (np.array(v) for v in rundir.read_calibration(tiny_run).train_colour_range)
    assert (low <= normal.mean((1, 2)).min(0) + 0.05).all() and (low <= high).all()
    with caplog.at_level("WARNING"):
        predict(list(normal[:2]), tiny_run)
    assert "mean colour" not in caplog.text
    onnx_file = tmp_path / "model.onnx"
    assert runner.invoke(app, ["export", "--model", str(tiny_run), "--out", str(onnx_file)]).exit_code == 0
    for changed in (np.clip(normal[:2] * 1.6, 0, 1), normal[:2] * 0.4):
        for model in ({"model": tiny_run}, {"onnx": onnx_file}):
            caplog.clear()
            with caplog.at_level("WARNING"):
                predict(list(changed), **model)
            assert "mean colour (R/G/B" in caplog.text and "outside the training images'" in caplog.text, model


def test_a_recalibrated_scorer_shows_its_new_buffers_to_a_captured_graph(tiny_run: Path) -> None:
    """A CUDA graph replays the tensors it captured: GraphedForward captures again when the scorer's own buffers
    move (tests/test_cuda.py replays it on a GPU)."""
    from robust_ad.cuda_graphs import buffer_state

    scorer = rundir.load_scorer(tiny_run)
    before = buffer_state(scorer)
    scorer.load_normalisation(rundir.read_calibration(tiny_run).model_dump())  # in place: same buffers
    assert buffer_state(scorer) == before
    statistics = scorer.memory_statistics()
    statistics["memory_bank"] = statistics["memory_bank"][:10]
    scorer.load_memory(statistics)
    assert buffer_state(scorer) != before


def test_eval_leaves_out_test_images_the_run_trained_on(synth_root: Path, tmp_path: Path, caplog) -> None:
    """A user trial: good images added to a plain folder after training redraw its test share, and eval scored
    images the model had trained on (optimistic metrics). The run records what it saw (split.json)."""
    from robust_ad.api import train, unseen
    from robust_ad.data.dataset import AnomalyDataset
    from tests.conftest import tiny_config

    source = synth_root / "bottle"
    root = tmp_path / "data" / "part"
    shutil.copytree(source / "train" / "good", root / "good")
    shutil.copytree(source / "test" / "scratch", root / "defect" / "scratch")
    run = train(tiny_config(tmp_path / "data", category="part", autoencoder={"epochs": 1}), tmp_path / "run")
    seen = rundir.seen_images(run)
    first = AnomalyDataset.load(tmp_path / "data", "part")
    assert seen == {s.path.relative_to(first.root).as_posix() for s in first.train + first.val}
    for path in sorted((source / "test" / "good").iterdir()):
        shutil.copy(path, root / "good" / f"new_{path.name}")
    grown = AnomalyDataset.load(tmp_path / "data", "part")
    leaked = {s.path.relative_to(grown.root).as_posix() for s in grown.test} & seen
    assert leaked  # the grown folder's test share holds images the run trained on
    with caplog.at_level("WARNING"):
        kept = unseen(grown, run)
    assert f"{counted(len(leaked), 'test image')} of" in caplog.text
    assert not {s.path.relative_to(grown.root).as_posix() for s in kept.test} & seen
    result = runner.invoke(app, ["eval", "--model", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model_sha256"] == rundir.model_digest(run)
    known = [s for s in grown.test if s.label == 1 or s.path.relative_to(grown.root).as_posix() in seen]
    only_seen = dataclasses.replace(grown, test=known)
    with pytest.raises(DataError, match=r"every normal test image of .* is one .* trained or calibrated on"):
        unseen(only_seen, run)
    (run / rundir.SPLIT).unlink()  # a run from before split.json: it cannot tell, and says so
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert unseen(grown, run).test == grown.test
    assert "does not record the images it trained on" in caplog.text


def test_the_reports_overlay_links_survive_any_file_name(tmp_path: Path) -> None:
    """'#' starts a URL fragment and '?' a query: overlays of such images did not show in report.html."""
    from robust_ad.report import html_report
    from robust_ad.scoring.evaluate import evaluate as measure

    test, prediction, _ = _random_evaluation(0)
    test.samples[:] = [
        dataclasses.replace(sample, path=Path(f"part #{i}?%41.png")) for i, sample in enumerate(test.samples)
    ]
    html_report(tmp_path, measure(test, prediction, -10.0), test, prediction, 1.0)  # every normal image flagged
    page = (tmp_path / "report.html").read_text()
    linked = re.findall(r'<img src="(overlays/[^"]+)"', page)
    assert linked and all((tmp_path / unquote(link)).is_file() for link in linked) and "#" not in "".join(linked)


def test_score_batches_camera_frames_by_pixels_too(
    tiny_run: Path, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Ten 16 MP frames in one batch took 10 GB: a batch also stops at BATCH_PIXELS; results are the same."""
    from robust_ad.scoring import files

    folder = synth_root / "bottle" / "test" / "hole"
    args = ["score", str(folder), "--model", str(tiny_run), "--no-overlays", "--batch", "4"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    sizes = []
    monkeypatch.setattr(files, "BATCH_PIXELS", 2 * 48 * 48)  # two of these frames a batch
    real = files.score_files

    def counting(paths, predict, *rest):
        return real(paths, lambda images: sizes.append(len(images)) or predict(images), *rest)

    monkeypatch.setattr("robust_ad.scoring.files.score_files", counting)
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).exit_code == 0
    assert sizes and max(sizes) == 2
    assert (tmp_path / "a" / "scores.csv").read_text() == (tmp_path / "b" / "scores.csv").read_text()
