"""SSDLite with a MobileNetV2 backbone: inverted residuals with ReLU6, extra feature layers,
and SSDLite heads (depthwise-separable 3x3 predictors) whose per-level box and class maps are
permuted to NHWC, flattened and concatenated; class scores through Softmax. 128x128 input,
width 1/2."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"images": {0: "batch"}}
OUTPUTS = {"boxes": {0: "batch"}, "scores": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 3}
OPSET = 13
CLASSES, ANCHORS = 11, 6


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNAct(cin, hidden, act=act)]
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=act),
                   ConvBNAct(hidden, cout, act=None)]
        self.conv = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.res else self.conv(x)


def separable(cin: int, cout: int) -> nn.Sequential:
    """SSDLite's predictor: depthwise 3x3 + BN + ReLU6, then a plain 1x1 conv."""
    return nn.Sequential(ConvBNAct(cin, cin, 3, groups=cin, act=nn.ReLU6), nn.Conv2d(cin, cout, 1))


class SSDLite(nn.Module):
    SETTINGS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 32, 2, 2), (6, 48, 2, 1), (6, 80, 2, 2))

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.ReLU6)]
        cin = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.low = nn.Sequential(*layers[:-2])    # stride 16, 48 channels
        self.high = nn.Sequential(*layers[-2:], ConvBNAct(cin, 160, act=nn.ReLU6))   # stride 32
        self.extras = nn.ModuleList(
            nn.Sequential(ConvBNAct(c_in, c_mid, act=nn.ReLU6),
                          ConvBNAct(c_mid, c_mid, 3, 2, groups=c_mid, act=nn.ReLU6),
                          ConvBNAct(c_mid, c_out, act=nn.ReLU6))
            for c_in, c_mid, c_out in ((160, 64, 128), (128, 32, 64)))
        chans = (48, 160, 128, 64)
        self.loc = nn.ModuleList(separable(c, ANCHORS * 4) for c in chans)
        self.conf = nn.ModuleList(separable(c, ANCHORS * CLASSES) for c in chans)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [self.low(x)]
        feats.append(self.high(feats[0]))
        for extra in self.extras:
            feats.append(extra(feats[-1]))
        b = x.shape[0]
        locs = [loc(f).permute(0, 2, 3, 1).reshape(b, -1, 4) for loc, f in zip(self.loc, feats, strict=True)]
        confs = [conf(f).permute(0, 2, 3, 1).reshape(b, -1, CLASSES) for conf, f in zip(self.conf, feats, strict=True)]
        return torch.cat(locs, 1), torch.softmax(torch.cat(confs, 1), -1)


def model() -> nn.Module:
    return SSDLite()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"images": rng.standard_normal((sizes["batch"], 3, 128, 128)).astype(np.float32)}
