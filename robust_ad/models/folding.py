"""Batch norms folded into the convolutions that feed them, for inference.

In eval mode a batch norm is an affine map per channel, so a convolution followed by one is a single convolution
with rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one kernel instead of two, and
one pass over the activations fewer. Scoring on an H200 spent 15 % of its GPU time in batch norms (fp16, 256 px,
batch 32; benchmarks/profile_gpu.txt). torch's ONNX exporter already folds them into an exported graph; eager
torch does not.
"""

from __future__ import annotations

import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck

from robust_ad.models.encoder import Encoder


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (convolution, batch norm) children of ``module`` where the convolution's output is the batch
    norm's input: neighbours in a Sequential, and convK → bnK in torchvision's residual blocks."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        candidates = list(itertools.pairwise(children))
    elif isinstance(module, BasicBlock | Bottleneck):
        candidates = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
    else:
        return []
    return [
        (conv, norm)
        for conv, norm in candidates
        if isinstance(children.get(conv), nn.Conv2d) and isinstance(children.get(norm), nn.BatchNorm2d)
    ]


def _read_stages(module: nn.Module) -> set[int]:
    """The encoder stages whose own output is read (a feature layer, the cut layer): folding the batch norm after
    such a convolution would change that output (``encoder.feature_layers: [conv1, ...]``)."""
    return {
        id(stage)
        for encoder in module.modules()
        if isinstance(encoder, Encoder)
        for name, stage in encoder.stages.named_children()
        if name in {encoder.layer, *encoder.feature_layers}
    }


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, every batch norm of ``module`` that directly follows a convolution into it, unless the
    convolution's own output is read as a feature; the batch norm becomes an Identity. The outputs stay the same (to
    rounding) in eval mode, the only mode this is for: the module is put in eval mode, and trained afterwards it
    would train without those batch norms. Returns how many were folded (0 the second time)."""
    module.eval()
    folded, read = 0, _read_stages(module)
    for parent in list(module.modules()):
        for conv, norm in _pairs(parent):
            if id(getattr(parent, conv)) in read:
                continue
            setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, norm)))
            setattr(parent, norm, nn.Identity())
            folded += 1
    return folded
