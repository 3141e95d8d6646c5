"""YOLOv5n-style detector: CSP bottlenecks (C3), SPPF, SiLU, nearest upsampling with Concat
(PANet neck), and the anchor-based Detect head decoding boxes in the graph (sigmoid, grid and
anchor arithmetic). Width 1/4 of YOLOv5n, one C3 per stage, 128x128 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"images": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"boxes": {0: "batch", 1: "anchors"}}
SIZES = {"batch": 1, "height": 128, "width": 128}
ALT = {"batch": 2, "height": 96, "width": 160}
OPSET = 12
CLASSES = 8
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(c, c, 1), ConvBNAct(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convs: one path through bottlenecks, one straight, concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2, self.cv3 = ConvBNAct(cin, c), ConvBNAct(cin, c), ConvBNAct(2 * c, cout)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNAct(cin, cin // 2), ConvBNAct(cin * 2, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), 1))


class Detect(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.no, self.na = CLASSES + 5, 3
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(3, 1, 3, 1, 1, 2))
        self.strides = (8, 16, 32)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for i, x in enumerate(feats):
            x = self.m[i](x)
            b, _, ny, nx = x.shape
            x = x.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            yv, xv = torch.meshgrid(torch.arange(ny, dtype=torch.float32),
                                    torch.arange(nx, dtype=torch.float32), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            xy, wh, conf = x.sigmoid().split((2, 2, self.no - 4), 4)
            xy = (xy * 2 + grid) * self.strides[i]
            wh = (wh * 2) ** 2 * self.anchors[i]
            out.append(torch.cat((xy, wh, conf), 4).view(b, -1, self.no))
        return torch.cat(out, 1)


class YoloV5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = (8, 16, 32, 64, 128)
        self.stem = ConvBNAct(3, w[0], 6, 2)
        self.b1 = nn.Sequential(ConvBNAct(w[0], w[1], 3, 2), C3(w[1], w[1]))
        self.b2 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C3(w[2], w[2]))          # P3
        self.b3 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C3(w[3], w[3]))          # P4
        self.b4 = nn.Sequential(ConvBNAct(w[3], w[4], 3, 2), C3(w[4], w[4]), SPPF(w[4], w[4]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat4, self.c4 = ConvBNAct(w[4], w[3]), C3(2 * w[3], w[3], shortcut=False)
        self.lat3, self.c3 = ConvBNAct(w[3], w[2]), C3(2 * w[2], w[2], shortcut=False)
        self.down3, self.n4 = ConvBNAct(w[2], w[2], 3, 2), C3(2 * w[2], w[3], shortcut=False)
        self.down4, self.n5 = ConvBNAct(w[3], w[3], 3, 2), C3(2 * w[3], w[4], shortcut=False)
        self.detect = Detect((w[2], w[3], w[4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b2(self.b1(self.stem(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        h5 = self.lat4(p5)
        h4 = self.lat3(self.c4(torch.cat((self.up(h5), p4), 1)))
        o3 = self.c3(torch.cat((self.up(h4), p3), 1))
        o4 = self.n4(torch.cat((self.down3(o3), h4), 1))
        o5 = self.n5(torch.cat((self.down4(o4), h5), 1))
        return self.detect([o3, o4, o5])


def model() -> nn.Module:
    return YoloV5()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    shape = (sizes["batch"], 3, sizes["height"], sizes["width"])
    return {"images": rng.random(shape, dtype=np.float32)}
