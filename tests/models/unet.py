"""A small U-Net: conv blocks with BatchNorm, MaxPool down, ConvTranspose and bilinear /
nearest Upsample (ONNX Resize) up, skip connections by concatenation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .common import calibrate_bn

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = ["output"]


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3 = block(3, 16), block(16, 32), block(32, 64)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = block(64, 32)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = block(32 + 16, 16)
        self.up0 = nn.Upsample(scale_factor=2, mode="nearest")
        self.refine = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        # Back to full resolution twice over (nearest Resize and a strided ConvTranspose).
        y = torch.cat([self.up0(d1[:, :8]), self.refine(d1)], 1)
        return self.head(y)


def build() -> tuple[Any, dict[str, np.ndarray]]:
    model = UNet()
    calibrate_bn(model, lambda: (torch.randn(2, 3, 64, 64),))
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    return model, {"input": x}
