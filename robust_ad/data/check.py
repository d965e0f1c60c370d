"""Validate a dataset on disk: every image decodes, masks match their images, splits are usable."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robust_ad.data.dataset import AnomalyDataset
from robust_ad.data.images import is_image_file, is_lossy, list_images, read_raw, to_mask
from robust_ad.data.layouts import READ_FROM, category_folder, layout_folders
from robust_ad.errors import ImageReadError, counted
from robust_ad.progress import track


@dataclass
class CheckReport:
    dataset: AnomalyDataset
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    formats: Counter = field(default_factory=Counter)  # "uint8 RGB" etc. -> count
    masks_matched: int = 0
    defects_without_mask: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # usable, but likely to cost detection: said, not refused

    @property
    def usable(self) -> bool:
        """Whether it can be trained on (a line with good parts only can: ``notes`` says what its lack of test images
        costs)."""
        return not self.problems and bool(self.dataset.train)

    def reason(self) -> str:
        """One line saying why the dataset is not usable ('' when it is)."""
        if self.problems:
            extra = len(self.problems) - 1
            more = f" (and {counted(extra, 'more problem')}, all listed above)" if extra else ""
            return self.problems[0] + more
        return ""


_CHANNELS = {1: "gray", 3: "RGB", 4: "RGBA"}


def check_dataset(dataset: AnomalyDataset) -> CheckReport:
    """Decode every image and mask of ``dataset`` and collect what is wrong with it."""
    report = CheckReport(dataset)
    samples = dataset.train + dataset.val + dataset.test
    normal = {id(s) for s in dataset.train + dataset.val}
    train_sizes, grey = Counter(), {True: Counter(), False: Counter()}  # grey[is a training image][is grey]
    odd_masks: dict[str, list] = defaultdict(list)
    for sample in track(samples, "checking images"):
        try:
            image = read_raw(sample.path)
        except ImageReadError as exc:
            report.problems.append(str(exc))
            continue
        channels = 1 if image.ndim == 2 else image.shape[2]
        grey[id(sample) in normal][channels == 1] += 1
        if id(sample) in normal:
            train_sizes[(image.shape[1], image.shape[0])] += 1
        report.sizes[(image.shape[1], image.shape[0])] += 1
        report.formats[f"{image.dtype} {_CHANNELS.get(channels, f'{channels}-channel')}"] += 1
        if sample.label == 0:
            continue
        if sample.mask_path is None:
            report.defects_without_mask += 1
            continue
        try:
            mask = read_raw(sample.mask_path)
        except ImageReadError as exc:
            report.problems.append(str(exc))
            continue
        if mask.shape[:2] != image.shape[:2]:
            report.problems.append(
                f"{sample.mask_path}: mask size {mask.shape[1::-1]} differs from image {image.shape[1::-1]}"
            )
        elif not (binary := to_mask(mask, lossy := is_lossy(sample.mask_path))).any():
            report.problems.append(f"{sample.mask_path}: mask of a defective image is empty")
        else:
            report.masks_matched += 1
            if lossy:
                odd_masks["are lossy JPEGs (stored as PNG, a mask keeps its edges)"].append(sample)
            elif mask.ndim == 3 and len(np.unique(mask.reshape(-1, mask.shape[2]), axis=0)) > 16:
                odd_masks["hold a photograph's many colours (an annotated image instead of its mask?)"].append(sample)
            if binary.mean() > 0.5:
                odd_masks["mark more than half of their image as defective (an inverted mask?)"].append(sample)
    report.notes += _notes(train_sizes, grey) + _unused(dataset)
    report.notes += [
        f"masks that {what}: {len(masks)} (one is {masks[0].mask_path}); pixel metrics trust them"
        for what, masks in odd_masks.items()
    ]
    if not dataset.test:
        report.notes.append(
            f"category '{dataset.category}' has no test images: it trains, and its threshold comes from held-out "
            "good images; 'eval' needs labelled test images (good and defective)"
        )
    return report


def _unused(dataset: AnomalyDataset) -> list[str]:
    """Defect-type folders without images and mask files that belong to no defect image: a copy that failed or a
    naming slip, which would silently drop a defect type or its pixel metrics."""
    masks, types = layout_folders(dataset.root, dataset.category, dataset.layout)
    notes = [f"{folder} holds no images: that defect type is not tested" for folder in types if not list_images(folder)]
    notes += _stray_images(dataset, masks)
    if masks is None or not masks.is_dir():
        return notes
    used = {s.mask_path.resolve() for s in dataset.test if s.mask_path is not None}
    unused = sorted(p for p in masks.rglob("*") if is_image_file(p) and p.resolve() not in used)
    if unused:
        many = len(unused) > 1
        notes.append(
            f"{counted(len(unused), 'mask file')} under {masks} belong{'' if many else 's'} to no defect "
            f"image and {'are' if many else 'is'} not used (one is {unused[0].relative_to(masks)}): a mask is named "
            "after its image "
            f"({'<defect type>/' if dataset.layout == 'mvtec' else ''}<stem>[_mask], any image suffix)"
        )
    return notes


def _stray_images(dataset: AnomalyDataset, masks: Path | None) -> list[str]:
    """Images in the category's folder that the layout does not read (a good/day2/ subfolder, a bad/ folder beside
    defect/): the check said 'usable' while a part of the data was left out."""
    base = category_folder(dataset.root, dataset.category, dataset.layout)
    samples = dataset.train + dataset.val + dataset.test
    read = {s.path.resolve() for s in samples} | {s.mask_path.resolve() for s in samples if s.mask_path is not None}
    stray = sorted(
        p
        for p in base.rglob("*")
        if is_image_file(p) and p.resolve() not in read and (masks is None or masks not in p.parents)
    )
    if not stray:
        return []
    many = len(stray) > 1
    return [
        f"{counted(len(stray), 'image')} under {base} {'are' if many else 'is'} not read (one is "
        f"{stray[0].relative_to(base)}): the {dataset.layout} layout reads {READ_FROM[dataset.layout]}"
    ]


def _notes(train_sizes: Counter, grey: dict[bool, Counter]) -> list[str]:
    """What a usable dataset should still be told: training images of several sizes (each is resized to the
    model's square on its own), and grey training images with colour test images or the other way round (a model
    trained on one scores the other as anomalous)."""
    notes = []
    if len(train_sizes) > 1:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in train_sizes.most_common(3))
        notes.append(f"training images come in {len(train_sizes)} sizes ({sizes}): crop them alike")
    for trained, tested in ((True, False), (False, True)):  # trained grey and tested colour, then the other way
        if grey[True][trained] and not grey[True][not trained] and grey[False][tested]:
            mode = {True: "grey", False: "colour"}
            notes.append(
                f"training images are all {mode[trained]} but {grey[False][tested]} test images are "
                f"{mode[tested]}: a model trained on one camera mode scores the other as anomalous"
            )
    return notes
