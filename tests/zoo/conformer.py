"""Conformer encoder block with its convolutional subsampling front (as in on-device ASR):
two stride-2 Conv2d + ReLU over (time, mel), a Linear to the model width, then the Macaron
block: half-step SiLU feed-forward, multi-head self-attention, the convolution module
(pointwise Conv1d to 2x width, GLU, depthwise Conv1d(k15), BatchNorm, SiLU, pointwise),
a second half-step feed-forward, and LayerNorm. Width 96, 4 heads; frames dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import MultiHeadAttention

DYNAMIC = {"fbank": {0: "batch", 1: "frames"}}
OUTPUTS = {"encoded": {0: "batch", 1: "steps"}}
SIZES = {"batch": 1, "frames": 64}
ALT = {"batch": 2, "frames": 45}
OPSET = 18
MELS, DIM, HEADS, KERNEL = 40, 96, 4, 15


def feed_forward() -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, 4 * DIM), nn.SiLU(), nn.Linear(4 * DIM, DIM))


class ConvModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(DIM)
        self.pw1 = nn.Conv1d(DIM, 2 * DIM, 1)
        self.dw = nn.Conv1d(DIM, DIM, KERNEL, padding=KERNEL // 2, groups=DIM)
        self.bn = nn.BatchNorm1d(DIM)
        self.pw2 = nn.Conv1d(DIM, DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pw1(self.ln(x).transpose(1, 2)), dim=1)
        return self.pw2(F.silu(self.bn(self.dw(y)))).transpose(1, 2)


class Conformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.subsample = nn.Sequential(nn.Conv2d(1, DIM, 3, 2), nn.ReLU(), nn.Conv2d(DIM, DIM, 3, 2), nn.ReLU())
        self.proj = nn.Linear(DIM * (((MELS - 1) // 2 - 1) // 2), DIM)
        self.ff1, self.ff2 = feed_forward(), feed_forward()
        self.ln_attn, self.attn = nn.LayerNorm(DIM), MultiHeadAttention(DIM, HEADS)
        self.conv = ConvModule()
        self.ln_out = nn.LayerNorm(DIM)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.subsample(fbank.unsqueeze(1))                      # b, c, t/4, f/4
        b, c, t, f = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b, t, c * f))
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(self.ln_attn(x))
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.ln_out(x)


def model() -> nn.Module:
    return Conformer()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"fbank": rng.standard_normal((sizes["batch"], sizes["frames"], MELS)).astype(np.float32)}
