"""The bank of normal feature vectors that the ``nearest`` score component searches: a bounded, uniform sample of
the training images' vectors (streamed), thinned to a greedy k-center coreset (PatchCore, Roth et al. 2022)."""

from __future__ import annotations

import torch


class ReservoirSample:
    """A uniform sample of at most ``size`` rows from row batches streamed in (memory bounded by ``size``): every
    row gets a random key and the ``size`` smallest keys are kept."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: torch.Tensor | None = None
        self.keys = torch.empty(0)

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float().cpu()
        keys = torch.rand(len(rows), generator=self.generator)
        if self.rows is not None:
            rows, keys = torch.cat([self.rows, rows]), torch.cat([self.keys, keys])
        if len(rows) > self.size:
            keep = keys.topk(self.size, largest=False).indices
            rows, keys = rows[keep], keys[keep]
        self.rows, self.keys = rows, keys


@torch.no_grad()
def greedy_coreset(points: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` rows of ``points`` (N, C) chosen greedily, each the point farthest from those chosen so far (the
    2-approximate k-center cover: every point lies within twice the optimal radius of one chosen), starting from
    the point farthest from the mean; all of them when N <= k."""
    if len(points) <= k:
        return points
    norms = points.square().sum(1)

    def to(index: int) -> torch.Tensor:  # squared distances of every point to point ``index``
        return (norms - 2 * (points @ points[index]) + norms[index]).clamp_min(0)

    chosen = [int((points - points.mean(0)).square().sum(1).argmax())]
    distance = to(chosen[0])
    for _ in range(k - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, to(chosen[-1]))
    return points[chosen]
