"""ShapesNet: the embedded default's small, readable CNN.

Four named stages of conv → BatchNorm → ReLU (max-pool between stages), then
global average pooling and one linear layer, so CAM applies directly. Input
normalization lives inside the model: it consumes [0, 1] RGB images.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .shapes_data import CLASSES

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module, so the model takes [0, 1] images."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(cin: int, cout: int, n: str) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{n}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
        (f"bn{n}", nn.BatchNorm2d(cout)),
        (f"relu{n}", nn.ReLU(inplace=True)),
    ]


def _stage(cin: int, cout: int, convs: int, pool: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    for i in range(convs):
        layers += _conv_block(cin if i == 0 else cout, cout, str(i + 1))
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(layers))


class ShapesNet(nn.Module):
    """64×64 RGB in [0, 1] → logits over the 8 shape classes."""

    classes: tuple[str, ...] = CLASSES

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16):
        super().__init__()
        w = width
        self.normalize = Normalize(MEAN, STD)
        self.stage1 = _stage(3, w, 1, pool=True)        # 64 → 32
        self.stage2 = _stage(w, 2 * w, 2, pool=True)    # 32 → 16
        self.stage3 = _stage(2 * w, 4 * w, 2, pool=True)  # 16 → 8
        self.stage4 = _stage(4 * w, 8 * w, 1, pool=False)  # 8 × 8, the CAM layer
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.fc(torch.flatten(self.gap(x), 1))
