"""Detection metrics. AUROC, F1 and curves come from scikit-learn; AUPRO follows the MVTec AD definition."""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image-level AUROC; None when the labels hold a single class (it is undefined then)."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel-level AUROC over every pixel of every image; None without defect pixels."""
    truth = masks.reshape(-1).astype(bool)
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, maps.reshape(-1)))


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the verdict 'anomalous' (score > threshold)."""
    return float(f1_score(labels, scores > threshold, zero_division=0.0))


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 over thresholds (an optimistic, test-set-tuned number), and a threshold that gives it to the rule
    score > threshold: halfway between the lowest score it calls anomalous and the highest it calls normal (just
    under the former, a defect scored one rounding step lower by another runtime came out normal)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    if not len(thresholds):
        return 0.0, 0.0
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    best = int(np.argmax(f1[:-1]))
    lowest_anomalous = thresholds[best]
    below = scores[scores < lowest_anomalous]
    halfway = (below.max() + lowest_anomalous) / 2 if below.size else -np.inf
    if not halfway < lowest_anomalous:  # no score below it, or adjacent floats
        halfway = np.nextafter(lowest_anomalous, -np.inf)
    return float(f1[best]), float(halfway)


def regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, flat pixel indices) of every 8-connected defect region."""
    out = []
    for index, mask in enumerate(masks):
        count, labelled = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        flat = labelled.reshape(-1)
        out += [(index, np.flatnonzero(flat == r)) for r in range(1, count)]
    return out


def pro_curve(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, steps: int = 300) -> tuple:
    """False-positive rate on normal pixels and mean per-region overlap, at thresholds spanning [0, fpr_limit]."""
    normal = np.sort(maps[~masks.astype(bool)])
    grid = np.quantile(normal, 1 - np.linspace(0, fpr_limit, steps))
    # just above the highest normal pixel: FPR 0, and whatever overlap the defects reach there
    thresholds = np.unique(np.append(grid, np.nextafter(normal[-1], np.inf)))[::-1]
    fpr = 1 - np.searchsorted(normal, thresholds, side="left") / normal.size
    overlaps = []
    for index, pixels in regions(masks):
        values = np.sort(maps[index].reshape(-1)[pixels])
        overlaps.append(1 - np.searchsorted(values, thresholds, side="left") / values.size)
    return fpr, np.mean(overlaps, axis=0)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit`` (in [0, 1])."""
    masks = masks.astype(bool)
    if not masks.any() or masks.all():
        return None
    curve_fpr, curve_pro = pro_curve(masks, maps, fpr_limit)
    keep = curve_fpr <= fpr_limit
    fpr, pro = np.concatenate([[0.0], curve_fpr[keep]]), np.concatenate([[0.0], curve_pro[keep]])
    if fpr[-1] < fpr_limit:  # closed at the limit on the line to the next point, as MVTec AD's evaluation does
        fpr, pro = np.append(fpr, fpr_limit), np.append(pro, np.interp(fpr_limit, curve_fpr, curve_pro))
    return float(np.trapezoid(pro, fpr) / fpr_limit)
