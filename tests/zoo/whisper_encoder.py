"""Whisper-tiny-style audio encoder: log-mel frames through Conv1d(k3) + GELU and a stride-2
Conv1d(k3) + GELU, sinusoidal positions sliced to the sequence length, pre-LN blocks (the key
projection without bias, as in Whisper), and the final LayerNorm. 80 mel bins as in Whisper,
width 96, 2 layers, 4 heads; the frame count is dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import PreNormBlock

DYNAMIC = {"mel": {0: "batch", 2: "frames"}}
OUTPUTS = {"features": {0: "batch", 1: "steps"}}
SIZES = {"batch": 1, "frames": 200}
ALT = {"batch": 2, "frames": 120}
OPSET = 18
MELS, DIM, HEADS, LAYERS, MAX_CTX = 80, 96, 4, 2, 256


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat((torch.sin(t), torch.cos(t)), 1)


class AudioEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(MELS, DIM, 3, padding=1)
        self.conv2 = nn.Conv1d(DIM, DIM, 3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(MAX_CTX, DIM))
        self.blocks = nn.ModuleList(PreNormBlock(DIM, HEADS, 4 * DIM) for _ in range(LAYERS))
        for block in self.blocks:
            block.attn.k.bias = None
        self.ln_post = nn.LayerNorm(DIM)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).permute(0, 2, 1)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def model() -> nn.Module:
    return AudioEncoder()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"mel": rng.standard_normal((sizes["batch"], MELS, sizes["frames"])).astype(np.float32)}
