"""DBNet-style text detector (as in PaddleOCR's DB and mmocr): a ResNet-style backbone, an FPN
(1x1 laterals, nearest upsampling and add, 3x3 smoothing, upsampled concatenation), and the DB
head: conv-BN-ReLU, two stride-2 ConvTransposes, sigmoid probability and threshold maps, and
the differentiable binarisation 1 / (1 + exp(-k (P - T))). Dynamic height and width."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"x": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"maps": {0: "batch", 2: "height", 3: "width"}}
SIZES = {"batch": 1, "height": 96, "width": 128}
ALT = {"batch": 1, "height": 64, "width": 192}
OPSET = 11


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(cin, cout, 3, stride, act=nn.ReLU), ConvBNAct(cout, cout, 3, act=None))
        self.short = nn.Identity() if stride == 1 and cin == cout else ConvBNAct(cin, cout, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Head(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(cin, cin // 4, 3, act=nn.ReLU),
            nn.ConvTranspose2d(cin // 4, cin // 4, 2, 2), nn.BatchNorm2d(cin // 4), nn.ReLU(),
            nn.ConvTranspose2d(cin // 4, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class DBNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 16, 3, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
        chans = (16, 24, 32, 48)
        self.stages = nn.ModuleList(
            BasicBlock(chans[max(i - 1, 0)], c, 1 if i == 0 else 2) for i, c in enumerate(chans))
        inner = 32
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in chans)
        self.smooth = nn.ModuleList(nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False) for _ in chans)
        self.prob, self.thresh = Head(inner), Head(inner)
        self.k = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        outs = [conv(t) for conv, t in zip(self.smooth, lat, strict=True)]
        fuse = torch.cat([F.interpolate(o, scale_factor=2.0 ** i, mode="nearest") for i, o in enumerate(outs)], 1)
        p, t = self.prob(fuse), self.thresh(fuse)
        binary = torch.reciprocal(1 + torch.exp(-self.k * (p - t)))
        return torch.cat((p, t, binary), 1)


def model() -> nn.Module:
    return DBNet()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    shape = (sizes["batch"], 3, sizes["height"], sizes["width"])
    return {"x": rng.standard_normal(shape).astype(np.float32)}
