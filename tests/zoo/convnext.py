"""ConvNeXt-style network: a 4x4 stride-4 patchify stem with channels-first LayerNorm, blocks
of 7x7 depthwise conv, LayerNorm over channels in NHWC (permute), Linear 4x expansion, GELU,
Linear, layer scale and residual; downsampling by LayerNorm + 2x2 stride-2 conv. ConvNeXt-T's
structure with depths 1-1-3-1 and widths 24-48-96-192, 64x64 input."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 3}
OPSET = 12


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's channels_first variant,
    written with explicit mean and variance as the reference implementation does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (1, 1, 3, 1), dims: tuple[int, ...] = (24, 48, 96, 192),
                 classes: int = 100) -> None:
        super().__init__()
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))])
        self.down.extend(nn.Sequential(LayerNorm2d(a, eps=1e-6), nn.Conv2d(a, b, 2, 2))
                         for a, b in itertools.pairwise(dims))
        self.stages = nn.ModuleList(nn.Sequential(*(Block(d) for _ in range(n))) for n, d in zip(depths, dims, strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.down, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean((-2, -1))))


def model() -> nn.Module:
    return ConvNeXt()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 64, 64)).astype(np.float32)}
