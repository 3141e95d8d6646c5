"""A 2-layer LSTM sequence model (batch-first input, linear head on every step)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = ["output"]


class SeqModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y)


def build() -> tuple[Any, dict[str, np.ndarray]]:
    x = np.random.default_rng(4).standard_normal((2, 20, 32)).astype(np.float32)
    return SeqModel(), {"input": x}
