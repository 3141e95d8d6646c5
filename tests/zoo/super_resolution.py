"""ESPCN super-resolution (the network of PyTorch's ONNX super-resolution example): 5x5 and
3x3 convs with tanh on the luminance channel at low resolution, a conv to r^2 channels and
PixelShuffle (depth-to-space) to the x3 image. Height and width dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

DYNAMIC = {"y": {0: "batch", 2: "height", 3: "width"}}
OUTPUTS = {"upscaled": {0: "batch", 2: "out_height", 3: "out_width"}}
SIZES = {"batch": 1, "height": 48, "width": 64}
ALT = {"batch": 2, "height": 30, "width": 41}
OPSET = 9
SCALE = 3


class ESPCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(32, SCALE * SCALE, 3, padding=1))
        self.shuffle = nn.PixelShuffle(SCALE)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.shuffle(self.body(y)))


def model() -> nn.Module:
    return ESPCN()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"y": rng.random((sizes["batch"], 1, sizes["height"], sizes["width"]), dtype=np.float32)}
