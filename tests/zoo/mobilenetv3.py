"""MobileNetV3-Small: inverted residuals with HardSwish or ReLU, squeeze-excite gated by
Hardsigmoid, the efficient last stage (1x1 conv, global pool, Linear + HardSwish, dropout,
classifier). The full layer table at width 0.5, 96x96 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct, SqueezeExcite

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 4}
OPSET = 13


def div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class Block(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [] if exp == cin else [ConvBNAct(cin, exp, act=act)]
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, div8(exp / 4), gate=nn.Hardsigmoid))
        layers.append(ConvBNAct(exp, cout, act=None))
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.res else self.body(x)


class MobileNetV3Small(nn.Module):
    # kernel, expansion, out, SE, activation, stride (the paper's Table 2)
    TABLE = ((3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
             (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1),
             (5, 240, 40, True, nn.Hardswish, 1), (5, 120, 48, True, nn.Hardswish, 1),
             (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
             (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1))

    def __init__(self, width: float = 0.5, classes: int = 100) -> None:
        super().__init__()
        cin = div8(16 * width)
        layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.Hardswish)]
        for k, e, c, se, act, s in self.TABLE:
            layers.append(Block(cin, k, div8(e * width), div8(c * width), se, act, s))
            cin = div8(c * width)
        last = div8(576 * width)
        layers.append(ConvBNAct(cin, last, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(last, 512), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(512, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def model() -> nn.Module:
    return MobileNetV3Small()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 96, 96)).astype(np.float32)}
