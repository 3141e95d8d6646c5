"""RegNetY-200MF-style network: stages of Y blocks (1x1, grouped 3x3 with group width 8,
squeeze-excite with sigmoid gate, 1x1) with a projection shortcut at each stage's first,
strided block. Depths 1-1-4-7 as in RegNetY-200MF, widths halved, 96x96 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct, SqueezeExcite

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 2}


class YBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(cin, cout, act=nn.ReLU),
            ConvBNAct(cout, cout, 3, stride, groups=cout // group_width, act=nn.ReLU),
            SqueezeExcite(cout, max(4, cin // 4)),
            ConvBNAct(cout, cout, act=None))
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else ConvBNAct(cin, cout, 1, stride, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class RegNetY(nn.Module):
    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.ReLU)]
        cin = 32
        for depth, width in ((1, 24), (1, 56), (4, 152), (7, 368)):
            width //= 2
            width = width // 8 * 8
            for i in range(depth):
                layers.append(YBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def model() -> nn.Module:
    return RegNetY()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 96, 96)).astype(np.float32)}
