"""anomalib peers for benchmarks/run.py: the same train, validation and test images, size and seed as robust-ad.

Every image model that anomalib exports is tried (video models aside). Nothing can be downloaded here, so each
gets a randomly initialised backbone (``pre_trained=False``) where it takes one and an empty texture folder
as ``dtd_dir`` (Perlin-noise anomalies without DTD textures) where it wants one; a model that still needs
downloaded weights, extra packages or a service fails, and the reason is reported. Peers are scored by the
same metric code as robust-ad (robust_ad.scoring.evaluate) on their raw outputs, and timed the same way:
forward passes over the in-memory test images, 16 at a time.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from robust_ad.data.arrays import ImageSet
from robust_ad.scoring.evaluate import evaluate
from robust_ad.scoring.inference import Prediction

log = logging.getLogger("benchmarks.peers")
VIDEO_MODELS = {"AiVad", "Fuvas"}
BATCH = 16
# Options that anomalib derives from a 256 px input and that must follow the image size.
SIZE_OPTIONS = {
    # FRE's input_dim is its pooled layer3 features: 1024 channels x (size / 16 / 2)^2 = size^2.
    "Fre": lambda size: {"input_dim": size * size},
}
TRAIN_BATCH = {"EfficientAd": 1}  # anomalib refuses any other training batch size for it


def available() -> str | None:
    """anomalib's version, or None when the `bench` extra is not installed."""
    try:
        import anomalib
    except ImportError:
        return None
    return anomalib.__version__


def image_models() -> list[str]:
    """Names of anomalib's image models."""
    from anomalib import models

    return [
        name
        for name in models.__all__
        if inspect.isclass(cls := getattr(models, name, None))
        and issubclass(cls, models.AnomalibModule)
        and name not in VIDEO_MODELS
    ]


def _loader(images: ImageSet, train: bool, batch_size: int = BATCH) -> torch.utils.data.DataLoader:
    from anomalib.data import ImageBatch, ImageItem

    items = [
        ImageItem(
            image=torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            gt_label=torch.tensor(int(label)),
            gt_mask=torch.from_numpy(mask),
            image_path=str(sample.path),
        )
        for image, mask, label, sample in zip(images.images, images.masks, images.labels, images.samples, strict=True)
    ]
    # Training drops the last partial batch: some peers (CFlow) need a minimum number of feature vectors per batch.
    return torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=ImageBatch.collate
    )


def _datamodule(sets: dict[str, ImageSet], batch_size: int):
    """robust-ad's train and validation images as a datamodule (some peers read the trainer's datamodule)."""
    from lightning.pytorch import LightningDataModule

    class Splits(LightningDataModule):
        train_batch_size = batch_size
        name = category = "robust-ad"  # only names anomalib's (temporary) work folder
        eval_batch_size = BATCH

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return _loader(sets["train"], True, batch_size)

        def val_dataloader(self) -> torch.utils.data.DataLoader:
            return _loader(sets["val"], train=False)

    return Splits()


def build(name: str, image_size: int, texture_dir: Path) -> tuple:
    """The anomalib model ``name`` configured to train here without downloads, at ``image_size``, and notes on
    how it was configured."""
    from anomalib import models

    cls = getattr(models, name)
    parameters = inspect.signature(cls.__init__).parameters
    # anomalib's own evaluation and visualisation are not needed: the benchmark scores the raw outputs itself.
    kwargs: dict = {k: False for k in ("evaluator", "visualizer") if k in parameters}
    if "pre_trained" in parameters:
        kwargs["pre_trained"] = False
    if "dtd_dir" in parameters:
        texture_dir.mkdir(exist_ok=True)
        kwargs["dtd_dir"] = texture_dir
    kwargs.update(SIZE_OPTIONS.get(name, lambda _: {})(image_size))
    notes = {}
    if "pre_processor" in parameters:
        try:
            kwargs["pre_processor"] = cls.configure_pre_processor(image_size=(image_size, image_size))
        except (TypeError, ValueError):  # a fixed input size, or a crop larger than the images: it resizes itself
            notes["input"] = "the model's own pre-processor (fixed input size)"
    notes |= {k: str(v) for k, v in kwargs.items() if k not in ("evaluator", "visualizer", "pre_processor")}
    return cls(**kwargs), notes


@torch.no_grad()
def raw_predict(model, images: np.ndarray) -> tuple[Prediction, float, bool]:
    """Raw scores and maps of ``model`` on (N, H, W, 3) images, the milliseconds per image it took, and
    whether it made anomaly maps at all."""
    model.eval()
    scores, maps = [], []
    began = time.perf_counter()
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start : start + BATCH]).permute(0, 3, 1, 2).contiguous()
        x = model.pre_processor(x) if model.pre_processor else x
        out = model.model(x)
        scores.append(out.pred_score.reshape(-1).float())
        maps.append(None if out.anomaly_map is None else out.anomaly_map.reshape(len(x), *out.anomaly_map.shape[-2:]))
    ms = (time.perf_counter() - began) * 1000 / len(images)
    size = images.shape[1:3]
    has_maps = all(m is not None for m in maps)
    if not has_maps:
        stacked = np.zeros((len(images), *size), np.float32)
    else:
        stacked = np.concatenate([m.float().numpy() for m in maps])
        if stacked.shape[1:] != size:
            stacked = np.stack([cv2.resize(m, size[::-1], interpolation=cv2.INTER_LINEAR) for m in stacked])
    score = torch.cat(scores).numpy()
    return Prediction(stacked, score, score, np.empty(0)), ms, has_maps


def _reason(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:240]
    lowered = text.lower()
    if any(k in lowered for k in ("urlopen", "internet", "hub", "download", "locate the file")):
        return f"needs weights or data downloaded at start, and there is no network here ({text})"
    if isinstance(exc, ImportError):
        return f"needs packages outside the bench extra ({text})"
    return text


def run_peer(name: str, sets: dict[str, ImageSet], settings: dict, seed: int, quantile: float) -> dict:
    """Train ``name`` on sets['train'] and evaluate it on sets['test']; its threshold follows robust-ad's rule,
    the ``quantile`` of its scores on the held-out normal images sets['val'] (which anomalib also validates on)."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    row: dict = {"model": name}
    image_size = sets["test"].images.shape[1]
    with tempfile.TemporaryDirectory() as work:
        try:
            seed_everything(seed, verbose=False)
            model, row["settings"] = build(name, image_size, Path(work) / "no-textures")
            engine = Engine(
                max_epochs=settings["max_epochs"],
                max_time={"minutes": settings["budget_minutes"]},
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=work,
            )
            began = time.perf_counter()
            engine.fit(model, datamodule=_datamodule(sets, TRAIN_BATCH.get(name, BATCH)))
            row["train_minutes"] = (time.perf_counter() - began) / 60
            row["epochs"] = engine.trainer.current_epoch
            threshold = float(np.quantile(raw_predict(model, sets["val"].images)[0].scores, quantile))
            prediction, row["ms_per_image"], has_maps = raw_predict(model, sets["test"].images)
        except Exception as exc:  # any peer may fail here; record why and go on with the others
            return {**row, "error": _reason(exc)}
    metrics = evaluate(sets["test"], prediction, threshold)
    keep = ("image_auroc", "pixel_auroc", "aupro", "f1") if has_maps else ("image_auroc", "f1")
    return {**row, **{k: metrics[k] for k in keep}}


def run_peers(categories: dict[str, dict[str, ImageSet]], settings: dict, seed: int, quantile: float) -> list[dict]:
    """Rows for every (category, anomalib image model); failures carry an 'error'."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail at once instead of retrying a download
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning|anomalib|torchmetrics|timm")
    names = settings.get("models") or image_models()
    rows = []
    for category, sets in categories.items():
        for name in names:
            log.info("anomalib %s on %s", name, category)
            rows.append({"category": category, **run_peer(name, sets, settings, seed, quantile)})
            log.info("%s", rows[-1])
    return rows
