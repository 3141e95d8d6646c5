"""MobileViT-XXS-style network: MobileNetV2 blocks with SiLU, and MobileViT blocks (local 3x3
and 1x1 convs, unfolding the map into 2x2 patches by reshape/transpose, pre-LN transformer
layers over the patches, folding back, 1x1 projection, concatenation with the input and a 3x3
fusion conv). XXS's channel plan, 64x64 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct, PreNormBlock
from tests.zoo.ssdlite import InvertedResidual

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 2}


def MV2(cin: int, cout: int, stride: int) -> InvertedResidual:  # a block name, as in the paper
    """MobileNetV2's inverted residual as MobileViT uses it: expansion 2 (XXS), SiLU."""
    return InvertedResidual(cin, cout, stride, 2, act=nn.SiLU)


class MobileViTBlock(nn.Module):
    def __init__(self, c: int, dim: int, depth: int, patch: int = 2) -> None:
        super().__init__()
        self.p = patch
        self.local = nn.Sequential(ConvBNAct(c, c, 3), nn.Conv2d(c, dim, 1, bias=False))
        self.transformer = nn.Sequential(*(PreNormBlock(dim, 4, 2 * dim) for _ in range(depth)),
                                         nn.LayerNorm(dim))
        self.proj = ConvBNAct(dim, c)
        self.fuse = ConvBNAct(2 * c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        b, d, h, w = y.shape
        p, nh, nw = self.p, h // self.p, w // self.p
        # unfold: (b, d, nh, p, nw, p) -> (b * p * p, nh * nw, d)
        t = y.reshape(b, d, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, nh * nw, d)
        t = self.transformer(t)
        y = t.reshape(b, p, p, nh, nw, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.fuse(torch.cat((x, self.proj(y)), 1))


class MobileViT(nn.Module):
    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(3, 16, 3, 2),
            MV2(16, 16, 1), MV2(16, 24, 2), MV2(24, 24, 1), MV2(24, 24, 1),
            MV2(24, 48, 2), MobileViTBlock(48, 64, 2),
            MV2(48, 64, 2), MobileViTBlock(64, 80, 4),
            MV2(64, 80, 2), MobileViTBlock(80, 96, 3),
            ConvBNAct(80, 320))
        self.fc = nn.Linear(320, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def model() -> nn.Module:
    return MobileViT()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 64, 64)).astype(np.float32)}
