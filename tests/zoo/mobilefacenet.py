"""MobileFaceNet (face embeddings on phones): PReLU everywhere, a depthwise 3x3 stem, linear
bottlenecks with expansion 2 and 4, a 1x1 conv to 512, the global depthwise conv (GDConv: a
depthwise conv as large as the map, no padding), a linear 1x1 to the 128-d embedding,
BatchNorm, flatten and L2 normalisation. 64x64 crops (112x112 in the paper); batch dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"face": {0: "batch"}}
OUTPUTS = {"embedding": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 3}
OPSET = 10
IMAGE = 64


class PReLUConv(ConvBNAct):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, groups, act=None)
        self.append(nn.PReLU(cout))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(PReLUConv(cin, hidden), PReLUConv(hidden, hidden, 3, stride, hidden),
                                  ConvBNAct(hidden, cout, act=None))
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.res else self.body(x)


class MobileFaceNet(nn.Module):
    # expansion, channels, repeats, stride (the paper's Table 1)
    SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

    def __init__(self, width: float = 0.5) -> None:
        super().__init__()
        c64 = int(64 * width)
        layers: list[nn.Module] = [PReLUConv(3, c64, 3, 2), PReLUConv(c64, c64, 3, 1, c64)]
        cin = c64
        for t, c, n, s in self.SETTINGS:
            cout = int(c * width)
            for i in range(n):
                layers.append(Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(PReLUConv(cin, 512))
        self.features = nn.Sequential(*layers)
        side = IMAGE // 16
        self.gdconv = ConvBNAct(512, 512, side, groups=512, act=None)
        self.gdconv[0].padding = (0, 0)
        self.linear = ConvBNAct(512, 128, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.gdconv(self.features(x))).flatten(1)
        return F.normalize(y, dim=1)


def model() -> nn.Module:
    return MobileFaceNet()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"face": rng.standard_normal((sizes["batch"], 3, IMAGE, IMAGE)).astype(np.float32)}
