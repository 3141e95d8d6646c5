"""YOLOX-s-style detector: Focus stem (space-to-depth by strided slicing), CSPDarknet with SiLU,
SPP with parallel max pools, PAFPN, and the decoupled head (separate classification and
regression branches, objectness) with grid decoding (exp for sizes). Width 1/4, 128x128 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct
from tests.zoo.yolov5 import C3

DYNAMIC = {"images": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"output": {0: "batch", 1: "anchors"}}
SIZES = {"batch": 1, "height": 128, "width": 128}
ALT = {"batch": 1, "height": 96, "width": 192}
CLASSES = 6


class Focus(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(4 * cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                    x[..., 1::2, 1::2]), 1))


class SPP(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(cin, cin // 2), ConvBNAct(cin // 2 * 4, cout)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(p(x) for p in self.pools)], 1))


class DecoupledHead(nn.Module):
    def __init__(self, channels: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvBNAct(c, width) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNAct(width, width, 3), ConvBNAct(width, width, 3))
                                 for _ in channels)
        self.reg = nn.ModuleList(nn.Sequential(ConvBNAct(width, width, 3), ConvBNAct(width, width, 3))
                                 for _ in channels)
        self.cls_pred = nn.ModuleList(nn.Conv2d(width, CLASSES, 1) for _ in channels)
        self.reg_pred = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in channels)
        self.obj_pred = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in channels)
        self.strides = (8, 16, 32)
        # YOLOX's initialisation: small predictor weights, a 1% prior on objectness and classes
        for conv in (*self.cls_pred, *self.reg_pred, *self.obj_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0 if conv in self.reg_pred else -4.6)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            c, r = self.cls[i](x), self.reg[i](x)
            y = torch.cat((self.reg_pred[i](r), self.obj_pred[i](r).sigmoid(),
                           self.cls_pred[i](c).sigmoid()), 1)
            h, w = y.shape[2:]
            y = y.flatten(2).permute(0, 2, 1)
            gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                    torch.arange(w, dtype=torch.float32), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, -1, 2)
            xy = (y[..., :2] + grid) * self.strides[i]
            wh = torch.exp(y[..., 2:4]) * self.strides[i]
            outs.append(torch.cat((xy, wh, y[..., 4:]), -1))
        return torch.cat(outs, 1)


class YoloX(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = (8, 16, 32, 64, 128)
        self.stem = Focus(3, w[0])
        self.d2 = nn.Sequential(ConvBNAct(w[0], w[1], 3, 2), C3(w[1], w[1]))
        self.d3 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C3(w[2], w[2], 2))
        self.d4 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C3(w[3], w[3], 2))
        self.d5 = nn.Sequential(ConvBNAct(w[3], w[4], 3, 2), SPP(w[4], w[4]), C3(w[4], w[4], shortcut=False))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat5, self.c4 = ConvBNAct(w[4], w[3]), C3(2 * w[3], w[3], shortcut=False)
        self.lat4, self.c3 = ConvBNAct(w[3], w[2]), C3(2 * w[2], w[2], shortcut=False)
        self.bu3, self.n4 = ConvBNAct(w[2], w[2], 3, 2), C3(2 * w[2], w[3], shortcut=False)
        self.bu4, self.n5 = ConvBNAct(w[3], w[3], 3, 2), C3(2 * w[3], w[4], shortcut=False)
        self.head = DecoupledHead((w[2], w[3], w[4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = self.d3(self.d2(self.stem(x)))
        x4 = self.d4(x3)
        x5 = self.d5(x4)
        f5 = self.lat5(x5)
        f4 = self.lat4(self.c4(torch.cat((self.up(f5), x4), 1)))
        p3 = self.c3(torch.cat((self.up(f4), x3), 1))
        p4 = self.n4(torch.cat((self.bu3(p3), f4), 1))
        p5 = self.n5(torch.cat((self.bu4(p4), f5), 1))
        return self.head([p3, p4, p5])


def model() -> nn.Module:
    return YoloX()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    shape = (sizes["batch"], 3, sizes["height"], sizes["width"])
    return {"images": (rng.random(shape, dtype=np.float32) * 255).astype(np.float32)}
