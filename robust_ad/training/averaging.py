"""An exponential moving average of a module's weights over training steps (what a training keeps instead of its
last step's weights: at a constant learning rate those wander from one step to the next)."""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP = 10  # the decay after n updates is at most (1 + n) / (WARMUP + n)


class MovingAverage(nn.Module):
    """``module``'s weights and buffers averaged over :meth:`update` calls: the first copies them, then each moves
    the average toward them by 1 - decay. The decay is ``decay`` at most, and (1 + n) / (10 + n) after n updates,
    so the average spans about the last tenth of a short training rather than holding on to its early weights.
    The number of updates is saved with the weights (a resumed training continues the same average)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        """Move the average toward ``live`` (a module of the same architecture)."""
        share = 1.0 if self.updates == 0 else 1 - min(self.decay, (1 + self.updates) / (WARMUP + self.updates))
        for mine, theirs in zip(self.module.state_dict().values(), live.state_dict().values(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, share)
            else:  # counters (batch norm's batches tracked)
                mine.copy_(theirs)
        self.updates += 1

    def get_extra_state(self) -> dict[str, int]:
        return {"updates": self.updates}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.updates = int(state["updates"])
