"""Byte-level text classifier (TextCNN over UTF-8 bytes, as in on-device spam and intent
filters): a 256-entry byte embedding, parallel Conv1d branches of widths 3, 5 and 7 with ReLU,
global max pooling over time, concatenation, dropout, Linear and Softmax. Batch and length
dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

DYNAMIC = {"bytes": {0: "batch", 1: "length"}}
OUTPUTS = {"probs": {0: "batch"}}
SIZES = {"batch": 1, "length": 96}
ALT = {"batch": 4, "length": 33}
OPSET = 11
EMBED, FILTERS, CLASSES = 32, 64, 5


class TextCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, EMBED)
        self.convs = nn.ModuleList(nn.Conv1d(EMBED, FILTERS, k, padding=k // 2) for k in (3, 5, 7))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * FILTERS, CLASSES)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = self.embed(data).transpose(1, 2)
        pooled = [torch.relu(conv(x)).amax(-1) for conv in self.convs]
        return torch.softmax(self.fc(self.drop(torch.cat(pooled, 1))), -1)


def model() -> nn.Module:
    return TextCNN()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"bytes": rng.integers(0, 256, (sizes["batch"], sizes["length"])).astype(np.int64)}
