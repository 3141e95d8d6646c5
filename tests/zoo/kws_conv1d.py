"""TC-ResNet8-style keyword spotter: MFCC coefficients as channels of a 1-D temporal signal,
Conv1d(k3) stem, three residual blocks of two Conv1d(k9) with BatchNorm and ReLU (stride 2 in
the first, with a 1x1 strided projection shortcut), global average pool over time, Linear and
Softmax over 12 keywords. 40 MFCCs, 101 frames (1 s); batch dynamic."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

DYNAMIC = {"mfcc": {0: "batch"}}
OUTPUTS = {"probs": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 5}
OPSET = 11
MFCC, FRAMES, KEYWORDS = 40, 101, 12


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm1d(cout))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 9, 2), nn.ReLU(), conv_bn(cout, cout, 9))
        self.short = nn.Sequential(conv_bn(cin, cout, 1, 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class TCResNet8(nn.Module):
    def __init__(self, width: float = 1.5) -> None:
        super().__init__()
        chans = [int(c * width) for c in (16, 24, 32, 48)]
        self.stem = nn.Conv1d(MFCC, chans[0], 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*(Block(a, b) for a, b in itertools.pairwise(chans)))
        self.fc = nn.Linear(chans[-1], KEYWORDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(self.blocks(self.stem(x)).mean(-1)), -1)


def model() -> nn.Module:
    return TCResNet8()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"mfcc": rng.standard_normal((sizes["batch"], MFCC, FRAMES)).astype(np.float32)}
