"""DeepLabV3 with a MobileNetV2 backbone (the mobile segmentation model): output stride 16 by
dilating the last stages, atrous spatial pyramid pooling (1x1, three dilated 3x3 branches, an
image-pooling branch upsampled bilinearly), projection, classifier, and bilinear upsampling
(align_corners=False) to the input size. Rates scaled to the small input; height and width
dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import ConvBNAct
from tests.zoo.ssdlite import InvertedResidual

DYNAMIC = {"image": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"segmentation": {0: "batch", 2: "height", 3: "width"}}
SIZES = {"batch": 1, "height": 96, "width": 128}
ALT = {"batch": 1, "height": 80, "width": 80}
OPSET = 11
CLASSES = 9


class DilatedResidual(InvertedResidual):
    """An inverted residual whose depthwise conv is dilated (instead of strided)."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(cin, cout, 1, 6)
        hidden = cin * 6
        self.conv[1] = ConvBNAct(hidden, hidden, 3, groups=hidden, act=nn.ReLU6, dilation=dilation)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvBNAct(cin, cout, act=nn.ReLU)])
        self.branches.extend(ConvBNAct(cin, cout, 3, act=nn.ReLU, dilation=r) for r in rates)
        self.pool = ConvBNAct(cin, cout, act=nn.ReLU)
        self.project = ConvBNAct(cout * (len(rates) + 2), cout, act=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, 1))


class DeepLabV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBNAct(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 12, 2, 6), InvertedResidual(12, 12, 1, 6),
            InvertedResidual(12, 16, 2, 6), InvertedResidual(16, 16, 1, 6),
            InvertedResidual(16, 32, 2, 6), DilatedResidual(32, 32, 2),
            DilatedResidual(32, 48, 2), DilatedResidual(48, 80, 4))
        self.aspp = ASPP(80, 64, (2, 4, 6))
        self.classifier = nn.Sequential(ConvBNAct(64, 64, 3, act=nn.ReLU), nn.Conv2d(64, CLASSES, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.aspp(self.backbone(image)))
        return F.interpolate(y, size=image.shape[-2:], mode="bilinear", align_corners=False)


def model() -> nn.Module:
    return DeepLabV3()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    shape = (sizes["batch"], 3, sizes["height"], sizes["width"])
    return {"image": rng.standard_normal(shape).astype(np.float32)}
