"""Evaluation of a detector on a labelled test split: overall and per defect type."""

from __future__ import annotations

import csv
import io

import numpy as np

from robust_ad.data.arrays import ImageSet
from robust_ad.scoring import metrics
from robust_ad.scoring.files import verdict
from robust_ad.scoring.inference import Prediction


def _detection_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray, threshold: float
) -> dict:
    with_masks = masks is not None
    return {
        "image_auroc": metrics.image_auroc(labels, scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps) if with_masks else None,
        "aupro": metrics.aupro(masks, maps) if with_masks else None,
        "f1": metrics.f1_at(labels, scores, threshold),
        "recall": float((scores[labels == 1] > threshold).mean()) if (labels == 1).any() else None,
    }


def evaluate(test: ImageSet, prediction: Prediction, threshold: float) -> dict:
    """metrics.json content. Pixel metrics use the normal images and the defect images that have a mask; how
    many defect images lacked one is reported (``n_without_mask``), and the metric is None only when none has."""
    types = np.array([s.defect_type for s in test.samples])
    labels, scores = test.labels, prediction.scores
    has_mask = np.array([s.mask_path is not None for s in test.samples])
    masked = (labels == 0) | has_mask

    def group(keep: np.ndarray) -> dict:
        anomalous = keep & (labels == 1)
        use = keep & masked
        with_masks = bool((anomalous & has_mask).any())
        return {
            **_detection_metrics(
                labels[keep], scores[keep], test.masks[use] if with_masks else None, prediction.maps[use], threshold
            ),
            "n_without_mask": int((anomalous & ~has_mask).sum()),
        }

    result = group(np.ones(len(labels), bool))
    f1_max, f1_threshold = metrics.best_f1(labels, scores) if len(np.unique(labels)) == 2 else (None, None)
    result.update(
        {
            "f1_max": f1_max,
            "f1_max_threshold": f1_threshold,
            "threshold": threshold,
            "n_normal": int((labels == 0).sum()),
            "n_anomalous": int((labels == 1).sum()),
            "false_positive_rate": float((scores[labels == 0] > threshold).mean()) if (labels == 0).any() else None,
        }
    )
    result["per_defect_type"] = {
        defect: {"n": int((types == defect).sum()), **group((types == "good") | (types == defect))}
        for defect in sorted(set(types) - {"good"})
    }
    return result


def per_image_csv(test: ImageSet, prediction: Prediction, threshold: float) -> str:
    """The eval folder's scores.csv: each test image's truth beside its scores and verdict (as 'score' gives them),
    to see which parts were missed or flagged."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "defect_type", "label", "raw_score", "normalized_score", "verdict", "correct"])
    for sample, raw, score in zip(test.samples, prediction.raw_scores, prediction.scores, strict=True):
        said = verdict(float(score), threshold)
        correct = (said == "anomalous") == bool(sample.label)
        writer.writerow([sample.path, sample.defect_type, sample.label, float(raw), float(score), said, correct])
    return buffer.getvalue()
