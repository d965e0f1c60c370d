"""Data layer: layouts (MVTec AD, VisA, folder), splits, image I/O, built-in example data.

Only ``resize`` (the product's one resize, shared with the exported graph) and ``arrays`` use torch.
"""

from robust_ad.data.dataset import AnomalyDataset
from robust_ad.data.layouts import Sample

__all__ = ["AnomalyDataset", "Sample"]
