"""GhostNet: Ghost modules (a primary 1x1 conv makes half the channels, a cheap depthwise 3x3
makes the other half from them, Concat, slice to the wanted count), Ghost bottlenecks with
optional stride-2 depthwise and squeeze-excite (hard-sigmoid gate after ReLU), and a
depthwise-separable shortcut where the shape changes. Width 0.5, 96x96 input."""

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


class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.cout = cout
        init = (cout + 1) // 2
        act = nn.ReLU if relu else None
        self.primary = ConvBNAct(cin, init, act=act)
        self.cheap = ConvBNAct(init, init, 3, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat((y, self.cheap(y)), 1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [GhostModule(cin, mid)]
        if stride > 1:
            layers.append(ConvBNAct(mid, mid, k, stride, groups=mid, act=None))
        if se:
            layers.append(SqueezeExcite(mid, max(4, mid // 4), gate=nn.Hardsigmoid))
        layers.append(GhostModule(mid, cout, relu=False))
        self.body = nn.Sequential(*layers)
        self.short = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            ConvBNAct(cin, cin, k, stride, groups=cin, act=None), ConvBNAct(cin, cout, act=None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class GhostNet(nn.Module):
    # kernel, expansion, out, SE, stride (GhostNet's table, stages 1-5)
    TABLE = ((3, 16, 16, False, 1), (3, 48, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2),
             (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 480, 112, True, 1),
             (5, 672, 160, True, 2), (5, 960, 160, True, 1))

    def __init__(self, width: float = 0.5, classes: int = 100) -> None:
        super().__init__()
        def w(c: int) -> int:
            return max(4, int(c * width + 2) // 4 * 4)

        cin = w(16)
        layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.ReLU)]
        for k, e, c, se, s in self.TABLE:
            layers.append(GhostBottleneck(cin, w(e), w(c), k, s, se))
            cin = w(c)
        layers.append(ConvBNAct(cin, w(960), act=nn.ReLU))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(w(960), 640, 1), nn.ReLU())
        self.fc = nn.Linear(640, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(nn.functional.adaptive_avg_pool2d(self.features(x), 1))
        return self.fc(y.flatten(1))


def model() -> nn.Module:
    return GhostNet()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 96, 96)).astype(np.float32)}
