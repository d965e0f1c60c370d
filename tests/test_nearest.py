"""The ``nearest`` score component: its bank (a uniform sample thinned to a greedy coreset) and its distances."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robust_ad import rundir
from robust_ad.data.loading import load_split, open_dataset
from robust_ad.scoring.calibration import fit_training_statistics
from robust_ad.scoring.coreset import ReservoirSample, greedy_coreset
from robust_ad.scoring.scorer import AnomalyScorer
from robust_ad.tensors import to_tensor


def test_greedy_coreset_covers_every_cluster_once() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:5] * 100
    sizes = [400, 30, 30, 30, 3]  # uneven: a uniform sample would miss the small clusters
    points = torch.cat([c + torch.randn(n, 8, generator=generator) for c, n in zip(centres, sizes, strict=True)])
    chosen = greedy_coreset(points, 5)
    assert ((chosen[:, None] - centres[None]).norm(dim=2) < 10).sum(0).tolist() == [1] * 5
    assert torch.isin(chosen, points).all()
    assert torch.equal(greedy_coreset(points[:4], 5), points[:4])  # fewer points than asked: all of them


def test_reservoir_keeps_a_bounded_uniform_sample_of_a_stream() -> None:
    sample = ReservoirSample(300, seed=1)
    for batch in range(10):
        sample.add(torch.full((200, 2), float(batch)))
    assert sample.rows is not None and sample.rows.shape == (300, 2)
    counts = torch.bincount(sample.rows[:, 0].long(), minlength=10)
    assert counts.min() >= 15 and counts.max() <= 45  # 30 expected from each batch of the stream


def test_nearest_distance_is_the_brute_force_minimum_over_the_bank(tiny_run: Path) -> None:
    scorer = rundir.load_scorer(tiny_run)
    generator = torch.Generator().manual_seed(0)
    channels = scorer.memory_bank.shape[1]
    scorer.load_memory({**scorer.memory_statistics(), "memory_bank": torch.randn(3000, channels, generator=generator)})
    feat = torch.randn(2, channels, 80, 70, generator=generator)  # 11,200 queries: the bank is searched in slices
    expected = torch.cdist(feat.flatten(2).transpose(1, 2), scorer.memory_bank).amin(2).square() / channels
    torch.testing.assert_close(scorer._nearest_distance(feat), expected.view(2, 1, 80, 70), atol=1e-4, rtol=1e-4)


JOINED = {"nearest_layers": ["layer1", "layer2"], "nearest_pool": 3}  # PatchCore-style vectors


@torch.no_grad()
def test_nearest_features_join_layers_and_average_neighbourhoods(tiny_run: Path) -> None:
    config = rundir.read_config(tiny_run)
    scorer = AnomalyScorer(rundir.load_model(tiny_run), config.scoring.model_copy(update=JOINED), 32)
    feats = scorer.model.features(torch.rand(2, 3, 32, 32))
    fine, coarse = feats["layer1"], feats["layer2"]
    joined = torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear")], 1)
    vectors = scorer.nearest_features(feats)
    assert vectors.shape == (2, fine.shape[1] + coarse.shape[1], *fine.shape[-2:])
    torch.testing.assert_close(vectors[:, :, 1:-1, 1:-1], F.avg_pool2d(joined, 3, stride=1))  # inside: 3 x 3 means
    torch.testing.assert_close(vectors[:, :, 0, 0], joined[:, :, :2, :2].mean((2, 3)))  # corner: its 4 in the map
    default = AnomalyScorer(rundir.load_model(tiny_run), config.scoring, 32)
    assert torch.equal(default.nearest_features(feats), fine)  # default: the finest layer as it is


@pytest.mark.parametrize("update", [{}, JOINED, {"upsample": 2}], ids=["finest", "joined", "upsampled"])
@torch.no_grad()
def test_calibration_banks_training_vectors_that_match_the_training_images(tiny_run: Path, update: dict) -> None:
    config = rundir.read_config(tiny_run)
    train = to_tensor(load_split(open_dataset(config), "train", config).images)
    settings = config.scoring.model_copy(update={"nearest_bank": 100, **update})
    scorer = AnomalyScorer(rundir.load_model(tiny_run), settings, 32)
    fit_training_statistics(scorer, train.split(8))
    seen = scorer.enlarge(train)  # as the networks see them
    finest = scorer.nearest_features(scorer.model.features(seen)).flatten(2).transpose(1, 2).flatten(0, 1)
    assert scorer.memory_bank.shape == (100, finest.shape[1])
    exact = torch.cdist(scorer.memory_bank, finest, compute_mode="donot_use_mm_for_euclid_dist")
    assert (exact.amin(1) < 1e-5).all()  # every banked vector is a training one
    # with room for every vector, each training image finds itself: distance 0 everywhere
    scorer.config = settings.model_copy(update={"nearest_bank": len(finest)})
    fit_training_statistics(scorer, train.split(8))
    own, flipped = (
        scorer._nearest_distance(scorer.nearest_features(scorer.model.features(x)))
        for x in (seen[:4], seen[:4].flip(3))
    )
    assert own.max() < 1e-3 * flipped.mean()


def test_nearest_follows_its_vectors_wherever_they_are(tiny_run: Path) -> None:
    """nearest needs no alignment: moved feature vectors get the same distances, moved with them, and a vector
    the bank holds gets 0 wherever it is."""
    scorer = rundir.load_scorer(tiny_run)
    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(2, scorer.memory_bank.shape[1], 6, 5, generator=generator)
    feat[1, :, 4, 3] = scorer.memory_bank[7]
    distance = scorer._nearest_distance(feat)
    assert distance[1, 0, 4, 3] < 1e-5 < distance[0, 0, 4, 3]
    torch.testing.assert_close(scorer._nearest_distance(feat.roll((2, 1), (2, 3))), distance.roll((2, 1), (2, 3)))


@torch.no_grad()
def test_a_scorer_without_nearest_keeps_no_bank_as_runs_trained_before_it(tiny_run: Path) -> None:
    config = rundir.read_config(tiny_run)
    train = to_tensor(load_split(open_dataset(config), "train", config).images)
    weights = {**config.scoring.weights, "nearest": 0.0}
    scorer = AnomalyScorer(rundir.load_model(tiny_run), config.scoring.model_copy(update={"weights": weights}), 32)
    assert "nearest" not in scorer.components and not hasattr(scorer, "memory_bank")
    fit_training_statistics(scorer, train.split(8))
    assert "memory_bank" not in scorer.memory_statistics()
    fused, _, _, _ = scorer(train[:2])
    assert torch.isfinite(fused).all()


@torch.no_grad()
def test_upsample_scores_enlarged_images_and_maps_them_at_the_input_size(tiny_run: Path) -> None:
    config = rundir.read_config(tiny_run)
    train = to_tensor(load_split(open_dataset(config), "train", config).images)
    scorer = AnomalyScorer(rundir.load_model(tiny_run), config.scoring.model_copy(update={"upsample": 2}), 32)
    fit_training_statistics(scorer, train.split(8))
    features = scorer.model.features(torch.zeros(1, 3, 64, 64))  # the statistics are of 64 px images
    assert scorer.memory_mean_layer1.shape == features["layer1"].shape[1:]
    fused, _, _, x_hat = scorer(train[:3])
    assert fused.shape == (3, 32, 32) and x_hat.shape == (3, 3, 32, 32)
    # the same terms as a scorer of 64 px images with those statistics, given the enlarged images
    plain = AnomalyScorer(rundir.load_model(tiny_run), config.scoring, 64)
    plain.load_memory(scorer.memory_statistics())
    plain.colour_offset.copy_(scorer.colour_offset)
    plain.colour_matrix.copy_(scorer.colour_matrix)
    terms, _ = scorer._terms(train[:3])
    expected, _ = plain._terms(scorer.enlarge(train[:3]))
    for name in scorer.components:
        for got, want in zip(terms[name], expected[name], strict=True):
            torch.testing.assert_close(got, want)
