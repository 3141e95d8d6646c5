"""EfficientNet-Lite0 (the edge variant: ReLU6 instead of Swish, no squeeze-excite, fixed stem
and head): MBConv blocks with expansion 6, 3x3 and 5x5 depthwise convs, BatchNorm eps 1e-3,
the 1280-channel head. Width 0.5, 96x96 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"images": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 2}


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNAct(cin, hidden, act=nn.ReLU6)]
        layers += [ConvBNAct(hidden, hidden, k, stride, groups=hidden, act=nn.ReLU6),
                   ConvBNAct(hidden, cout, act=None)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.res else self.body(x)


class EfficientNetLite(nn.Module):
    # expansion, kernel, stride, out channels, repeats (B0's stages)
    STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))

    def __init__(self, width: float = 0.5, classes: int = 100) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 32, 3, 2, act=nn.ReLU6)]   # Lite keeps stem and head
        cin = 32
        for e, k, s, c, n in self.STAGES:
            cout = max(8, int(c * width) // 8 * 8)
            for i in range(n):
                layers.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        layers.append(ConvBNAct(cin, 1280, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def model() -> nn.Module:
    return EfficientNetLite()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"images": rng.standard_normal((sizes["batch"], 3, 96, 96)).astype(np.float32)}
