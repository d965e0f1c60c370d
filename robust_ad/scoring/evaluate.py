"""Evaluation of a detector on a labelled test split: overall and per defect type."""

from __future__ import annotations

import numpy as np

from robust_ad.data.arrays import ImageSet
from robust_ad.scoring import metrics
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


def evaluate(test: ImageSet, prediction: Prediction, threshold: float, has_masks: dict[str, bool]) -> dict:
    """metrics.json content. Pixel metrics use only images whose masks exist (None when no defect has one)."""
    types = np.array([s.defect_type for s in test.samples])
    labels, scores = test.labels, prediction.scores
    masked = np.array([label == 0 or has_masks.get(t, False) for label, t in zip(labels, types, strict=True)])
    any_masks = any(has_masks.values())
    result = _detection_metrics(
        labels, scores, test.masks[masked] if any_masks else None, prediction.maps[masked], threshold
    )
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
    per_type = {}
    for defect in sorted(set(types) - {"good"}):
        keep = (types == "good") | (types == defect)
        masks = test.masks[keep] if has_masks.get(defect, False) else None
        per_type[defect] = {
            "n": int((types == defect).sum()),
            **_detection_metrics(labels[keep], scores[keep], masks, prediction.maps[keep], threshold),
        }
    result["per_defect_type"] = per_type
    return result
