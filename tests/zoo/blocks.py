"""Building blocks several zoo architectures share (written as their papers' reference code does)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + activation; ``act=None`` leaves the activation out. The
    BatchNorm epsilon is YOLO's and EfficientNet's 1e-3 (torch's default 1e-5 lets channels that
    calibration saw almost constant amplify rounding noise a thousandfold)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.SiLU, dilation: int = 1, eps: float = 1e-3) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation=dilation, groups=groups,
                      bias=False),
            nn.BatchNorm2d(cout, eps),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global average pool, bottleneck 1x1 convs, gate (Hardsigmoid in MobileNetV3, Sigmoid in
    EfficientNet/RegNetY/GhostNet)."""

    def __init__(self, channels: int, reduced: int, gate: type[nn.Module] = nn.Sigmoid,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v projections; ``bias`` is added to the
    scores (masks, relative position bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if bias is not None:
            scores = scores + bias
        ctx = torch.softmax(scores, dim=-1) @ v
        return self.out(ctx.transpose(1, 2).reshape(b, n, c))


class PreNormBlock(nn.Module):
    """A pre-LayerNorm transformer block (ViT, MobileViT, Whisper): attention and a GELU MLP,
    each in a residual branch."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), MultiHeadAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))
