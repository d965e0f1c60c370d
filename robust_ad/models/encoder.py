"""Encoders: torchvision backbones (randomly initialised, never downloaded) cut at a named layer.

Layer names: ResNets use their own (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` … ``layer4``);
VGG-16 and AlexNet name their feature stack ``conv{block}_{k}``, ``relu{block}_{k}``, ``pool{block}``
(blocks end at each max-pool), e.g. ``relu3_3`` or ``pool2``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from robust_ad.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet18", "resnet50", "wide_resnet50_2", "vgg16", "alexnet")


def _named_stages(backbone: str) -> list[tuple[str, str, nn.Module]]:
    """(friendly name, torchvision qualified name, module) in forward order."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    net = getattr(torchvision.models, backbone)(weights=None)
    if backbone.startswith(("resnet", "wide_resnet")):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return [(n, n, getattr(net, n)) for n in names]
    stages, block, k = [], 1, 0
    for index, module in enumerate(net.features):
        if isinstance(module, nn.MaxPool2d):
            name, block, k = f"pool{block}", block + 1, 0
        elif isinstance(module, nn.Conv2d):
            k += 1
            name = f"conv{block}_{k}"
        else:
            name = f"relu{block}_{k}"
        stages.append((name, f"features.{index}", module))
    return stages


def _scale(n: int, width: float) -> int:
    return max(1, round(n * width))


def _scale_widths(module: nn.Module, width: float) -> None:
    """Replace convolutions and batch norms by copies with ``width`` times the channels (input RGB kept)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            in_ch = child.in_channels if child.in_channels == 3 else _scale(child.in_channels, width)
            new = nn.Conv2d(
                in_ch,
                _scale(child.out_channels, width),
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                child.groups,
                child.bias is not None,
            )
            setattr(module, name, new)
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(_scale(child.num_features, width)))
        else:
            _scale_widths(child, width)


class Encoder(nn.Module):
    """A backbone cut after ``layer``; takes RGB images in [0, 1] and normalises them itself."""

    def __init__(
        self,
        backbone: str = "resnet18",
        layer: str = "layer2",
        feature_layers: Sequence[str] = ("layer1", "layer2"),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        stages = _named_stages(backbone)
        names = [name for name, _, _ in stages]
        for wanted in [layer, *feature_layers]:
            if wanted not in names:
                raise ConfigError(f"backbone {backbone} has no layer '{wanted}' (layers: {', '.join(names)})")
        cut = names.index(layer) + 1
        if any(names.index(f) >= cut for f in feature_layers):
            raise ConfigError(f"feature layers must come at or before the cut layer '{layer}'")
        self.backbone, self.layer, self.feature_layers, self.width = backbone, layer, list(feature_layers), width
        self.stages = nn.Sequential(OrderedDict((name, module) for name, _, module in stages[:cut]))
        self.source_names = {name: source for name, source, _ in stages[:cut]}
        if width != 1.0:
            _scale_widths(self.stages, width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Feature maps of every stage, in order (the last one is the cut layer's)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        h = (x - self.mean) / self.std
        for name, stage in self.stages.named_children():
            h = stage(h)
            out[name] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[self.layer]

    @property
    def out_channels(self) -> int:
        return self.probe()[self.layer][0]

    def probe(self, size: int = 64) -> OrderedDict[str, tuple[int, float]]:
        """(channels, input-to-feature stride) of every stage, from a dry run."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            feats = self.features(torch.zeros(1, 3, size, size, device=self.mean.device))
            self.train(was_training)
        return OrderedDict((n, (f.shape[1], size / f.shape[-1])) for n, f in feats.items())


class ProxyClassifier(nn.Module):
    """Encoder + global pooling + linear head: what robust training optimises."""

    def __init__(self, encoder: Encoder, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(encoder.out_channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
