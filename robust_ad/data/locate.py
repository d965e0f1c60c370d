"""Where a category's dataset is when the user names none: ``ROBUST_AD_DATA``, then the usual places."""

from __future__ import annotations

import os
from pathlib import Path

from robust_ad.data.layouts import detect_layout
from robust_ad.errors import DataError

ENV = "ROBUST_AD_DATA"
# Searched in this order, relative to the current folder: where people unpack MVTec AD and VisA, and where
# 'robust-ad datasets synth' writes the built-in example categories.
USUAL_PLACES = (
    "datasets/mvtec",
    "datasets/mvtec_anomaly_detection",
    "mvtec_anomaly_detection",
    "mvtec",
    "datasets/visa",
    "datasets/VisA",
    "VisA",
    "datasets/synthetic",
    "datasets",
    "data",
)
HOW_TO_GET = (
    "get MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad and unpack it into "
    "./datasets/mvtec (see datasets/README.md), or pass --data-root"
)


def _has(root: Path, category: str) -> bool:
    try:
        detect_layout(root, category)
    except DataError:
        return False
    return root.is_dir()


def find_data_root(category: str, given: str | Path | None = None) -> Path:
    """``given`` if set, else the ``ROBUST_AD_DATA`` folder, else the first usual place holding ``category``."""
    if given:
        return Path(given)
    env = os.environ.get(ENV)
    if env:
        if not _has(Path(env), category):
            raise DataError(f"no dataset for category '{category}' under {ENV}={env}; {HOW_TO_GET}")
        return Path(env)
    for place in USUAL_PLACES:
        if _has(Path(place), category):
            return Path(place)
    looked = ", ".join(f"./{p}" for p in USUAL_PLACES)
    raise DataError(f"no dataset for category '{category}' found ({ENV} unset; looked in {looked}); {HOW_TO_GET}")
