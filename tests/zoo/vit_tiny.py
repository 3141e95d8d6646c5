"""ViT-Tiny: 16x16 patch embedding by a strided conv, a class token, learned position
embeddings, pre-LayerNorm blocks (3 heads of 64, GELU MLP 4x) and the class-token head. The
real width (192) and heads, 4 of the 12 blocks, 64x64 input (16 patches + class token)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import PreNormBlock

DYNAMIC = {"pixel_values": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 2}
OPSET = 13
DIM, HEADS, DEPTH, PATCH, IMAGE = 192, 3, 4, 16, 64


class ViT(nn.Module):
    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (IMAGE // PATCH) ** 2 + 1, DIM) * 0.02)
        self.blocks = nn.Sequential(*(PreNormBlock(DIM, HEADS, 4 * DIM) for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.head = nn.Linear(DIM, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def model() -> nn.Module:
    return ViT()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"pixel_values": rng.standard_normal((sizes["batch"], 3, IMAGE, IMAGE)).astype(np.float32)}
