"""Evaluation report: ROC curves (PNG) and an HTML page with the worst false positives and negatives."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import numpy as np

from robust_ad.data.arrays import ImageSet
from robust_ad.data.images import write_image
from robust_ad.fileio import write_atomic, write_text
from robust_ad.scoring.files import overlay_picture, verdict
from robust_ad.scoring.inference import Prediction


def roc_figure(path: Path, test: ImageSet, prediction: Prediction, title: str) -> Path:
    """Image-level ROC per defect type (normal test images vs that type) and overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    types = np.array([s.defect_type for s in test.samples])
    fig, ax = plt.subplots(figsize=(5, 5))
    groups = [("all defects", types != "good")] + [(t, types == t) for t in sorted(set(types) - {"good"})]
    for name, chosen in groups:
        keep = (types == "good") | chosen
        if len(np.unique(test.labels[keep])) == 2:
            fpr, tpr, _ = roc_curve(test.labels[keep], prediction.scores[keep])
            ax.plot(fpr, tpr, lw=2.5 if name == "all defects" else 1.2, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:  # no normal or no defective test images: no curve to draw
        ax.text(0.5, 0.55, "no ROC: the test split lacks normal or defective images", ha="center", fontsize=8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


def html_report(out: Path, metrics: dict, test: ImageSet, prediction: Prediction, vmax: float, worst: int = 6) -> Path:
    """report.html beside overlays of the worst false positives (normal, highest scores) and negatives."""
    scores, labels = prediction.scores, test.labels
    threshold = metrics["threshold"]
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    false_pos = [i for i in normal[np.argsort(-scores[normal])] if scores[i] > threshold]
    false_neg = [i for i in anomalous[np.argsort(scores[anomalous])] if scores[i] <= threshold]
    sections = []
    for title, every in (("False positives", false_pos), ("False negatives", false_neg)):
        cells = []
        for i in every[:worst]:
            name = f"overlays/{i:04d}_{test.samples[i].path.stem}.png"
            caption = f"{verdict(float(scores[i]), threshold)} {scores[i]:.2f}"
            mask = test.masks[i] if test.labels[i] else None
            write_image(out / name, overlay_picture(test.images[i], prediction.maps[i], vmax, caption, mask))
            cells.append(
                f'<figure><img src="{html.escape(quote(name))}" width="768"><figcaption>'
                f"{html.escape(str(test.samples[i].path))}<br>{html.escape(test.samples[i].defect_type)}, "
                f"score {scores[i]:.2f}</figcaption></figure>"
            )
        shown = f"the {min(worst, len(every))} worst of {len(every)}" if len(every) > worst else str(len(every))
        sections.append(f"<h2>{title} ({shown})</h2>" + ("".join(cells) or "<p>none</p>"))
    keys = ["image_auroc", "pixel_auroc", "aupro", "f1", "recall"]
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{m['n']}</td>" + "".join(f"<td>{_fmt(m[k])}</td>" for k in keys) + "</tr>"
        for t, m in metrics["per_defect_type"].items()
    )
    shown = [*keys, "false_positive_rate", "f1_max", "threshold"]  # false alarms: the cost on a line
    overall = "".join(f"<tr><th>{k}</th><td>{_fmt(metrics.get(k))}</td></tr>" for k in shown)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>robust-ad evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}
figure{{display:inline-block;margin:6px}}</style></head><body>
<h1>robust-ad evaluation: {html.escape(str(metrics.get("category", "")))}</h1>
<p>model {html.escape(str(metrics.get("model", "")))}; threshold {threshold:.3f} (normalised score)</p>
<table>{overall}</table><img src="roc.png" width="420">
<h2>Per defect type</h2><table><tr><th>type</th><th>n</th>{"".join(f"<th>{k}</th>" for k in keys)}</tr>{rows}</table>
{"".join(sections)}
<p>Overlays: image, heat map blended, heat map (blue = normal, red = at least {vmax:.1f} normal std).</p>
</body></html>"""
    return write_text(out / "report.html", page)
