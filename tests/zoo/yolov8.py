"""YOLOv8n-style anchor-free detector: C2f blocks (Split into halves, chained bottlenecks,
Concat), SPPF, SiLU, nearest upsampling, and the decoupled head with Distribution Focal Loss
box decoding (Softmax over 16 bins, a fixed 1x1 conv with bin weights) and anchor points made
from the feature map shapes. Width 1/4 of YOLOv8n, 128x128 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct
from tests.zoo.yolov5 import SPPF

DYNAMIC = {"images": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"output": {0: "batch", 2: "anchors"}}
SIZES = {"batch": 1, "height": 128, "width": 128}
ALT = {"batch": 2, "height": 160, "width": 96}
CLASSES, BINS = 8, 16


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(c, c, 3), ConvBNAct(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = ConvBNAct(cin, 2 * self.c), ConvBNAct((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Expected value of a 16-bin distribution per box side: Softmax, then a 1x1 conv whose
    weights are 0..15."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(BINS, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(BINS, dtype=torch.float32).view(1, BINS, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, BINS, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        c2, c3 = max(16, channels[0] // 4, 4 * BINS), max(channels[0], CLASSES)
        self.box = nn.ModuleList(nn.Sequential(ConvBNAct(c, c2, 3), ConvBNAct(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * BINS, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNAct(c, c3, 3), ConvBNAct(c3, c3, 3),
                                               nn.Conv2d(c3, CLASSES, 1)) for c in channels)
        self.dfl = DFL()
        self.strides = (8, 16, 32)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b = feats[0].shape[0]
        outs, points, strides = [], [], []
        for i, x in enumerate(feats):
            outs.append(torch.cat((self.box[i](x), self.cls[i](x)), 1).view(b, 4 * BINS + CLASSES, -1))
            h, w = x.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                    torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(self.strides[i])))
        y = torch.cat(outs, 2)
        anchor = torch.cat(points).transpose(0, 1).unsqueeze(0)
        stride = torch.cat(strides).transpose(0, 1)
        box, cls = y.split((4 * BINS, CLASSES), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        xy = (anchor - lt + anchor + rb) / 2
        wh = rb + lt
        return torch.cat((torch.cat((xy, wh), 1) * stride, cls.sigmoid()), 1)


class YoloV8(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = (8, 16, 32, 64, 128)
        self.stem = ConvBNAct(3, w[0], 3, 2)
        self.b1 = nn.Sequential(ConvBNAct(w[0], w[1], 3, 2), C2f(w[1], w[1], shortcut=True))
        self.b2 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C2f(w[2], w[2], 2, shortcut=True))
        self.b3 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C2f(w[3], w[3], 2, shortcut=True))
        self.b4 = nn.Sequential(ConvBNAct(w[3], w[4], 3, 2), C2f(w[4], w[4], shortcut=True),
                                SPPF(w[4], w[4]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.t4, self.t3 = C2f(w[4] + w[3], w[3]), C2f(w[3] + w[2], w[2])
        self.d3, self.n4 = ConvBNAct(w[2], w[2], 3, 2), C2f(w[2] + w[3], w[3])
        self.d4, self.n5 = ConvBNAct(w[3], w[3], 3, 2), C2f(w[3] + w[4], w[4])
        self.detect = Detect((w[2], w[3], w[4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b2(self.b1(self.stem(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        h4 = self.t4(torch.cat((self.up(p5), p4), 1))
        o3 = self.t3(torch.cat((self.up(h4), p3), 1))
        o4 = self.n4(torch.cat((self.d3(o3), h4), 1))
        o5 = self.n5(torch.cat((self.d4(o4), p5), 1))
        return self.detect([o3, o4, o5])


def model() -> nn.Module:
    return YoloV8()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    shape = (sizes["batch"], 3, sizes["height"], sizes["width"])
    return {"images": rng.random(shape, dtype=np.float32)}
