"""anomalib peers on the same data, split and image size as benchmarks/run.py (needs the `bench` extra).

    pip install -e '.[bench]'
    python benchmarks/anomalib_peers.py --data-root benchmarks/results/data --categories bottle fabric

Nothing may be downloaded here, so only models that train from random initialisation can run:
PaDiM and PatchCore on a randomly initialised backbone (pre_trained=False), GANomaly, DRAEM without the
DTD texture source (Perlin-noise anomalies only). STFPM needs a pretrained teacher and is reported as
not runnable. Results replace the "anomalib peers" section of benchmarks/RESULTS.md and go to
benchmarks/anomalib_results.json. anomalib trains on every train/good image, while robust-ad holds
15 % of them out for calibration; the test split is the same.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

PEERS = {
    "PaDiM (random resnet18)": ("Padim", {"pre_trained": False}, 1),
    "PatchCore (random wide_resnet50_2)": ("Patchcore", {"pre_trained": False}, 1),
    "GANomaly": ("Ganomaly", {}, 15),
    "DRAEM (no DTD)": ("Draem", {"dtd_dir": None}, 15),
    "STFPM": (None, {}, 0),
}
NOT_RUNNABLE = {"STFPM": "its teacher network must be ImageNet-pretrained; the weights cannot be downloaded here"}


def run_peer(name: str, root: Path, category: str, image_size: int, work: Path) -> dict:
    import anomalib
    from anomalib import models
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    class_name, kwargs, epochs = PEERS[name]
    model_cls = getattr(models, class_name)
    pre_processor = model_cls.configure_pre_processor(image_size=(image_size, image_size))
    model = model_cls(pre_processor=pre_processor, **kwargs)
    datamodule = MVTecAD(root=root, category=category, train_batch_size=16, eval_batch_size=16, num_workers=0, seed=0)
    engine = Engine(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=work)
    began = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    minutes = (time.perf_counter() - began) / 60
    began = time.perf_counter()
    (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    n_test = len(datamodule.test_data)
    return {
        "model": name,
        "category": category,
        "image_auroc": metrics.get("image_AUROC"),
        "pixel_auroc": metrics.get("pixel_AUROC"),
        "train_minutes": minutes,
        "ms_per_image": (time.perf_counter() - began) * 1000 / n_test,
        "epochs": epochs,
        "anomalib": anomalib.__version__,
    }


def _cell(value: object) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def section(rows: list[dict], command: str) -> str:
    columns = ["model", "category", "image_auroc", "pixel_auroc", "train_minutes", "ms_per_image", "epochs"]
    lines = [
        "## anomalib peers",
        "",
        f"Produced by `{command}` on the same data, test split and image size as the tables above "
        f"({platform.processor() or platform.machine()}, CPU). AUPRO is not reported for them (anomalib's "
        "default test metrics).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows if "error" not in row]
    failed = [row for row in rows if "error" in row]
    if failed:
        lines += ["", "Could not run:"] + [f"- {row['model']} ({row['category']}): {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/results/data"))
    parser.add_argument("--categories", nargs="+", default=["bottle", "fabric"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--report", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    work = args.data_root.parent / "anomalib"
    rows = []
    for category in args.categories:
        for name in PEERS:
            if name in NOT_RUNNABLE:
                rows.append({"model": name, "category": category, "error": NOT_RUNNABLE[name]})
                continue
            try:
                rows.append(run_peer(name, args.data_root.resolve(), category, args.image_size, work))
            except Exception as exc:  # record why a peer could not run, then go on with the others
                reason = f"{type(exc).__name__}: {exc}"[:300]
                if "urlopen" in reason:  # it tried to download something at start
                    reason = f"needs a download and there is no network here ({reason})"
                rows.append({"model": name, "category": category, "error": reason})
            print(json.dumps(rows[-1]), flush=True)
    args.report.with_name("anomalib_results.json").write_text(json.dumps(rows, indent=2))
    command = f"python benchmarks/anomalib_peers.py --categories {' '.join(dict.fromkeys(args.categories))}"
    text = args.report.read_text() if args.report.exists() else ""
    head = text.split("## anomalib peers")[0]
    args.report.write_text(head + section(rows, command))


if __name__ == "__main__":
    main()
