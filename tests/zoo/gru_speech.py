"""Streaming GRU acoustic model (as in on-device keyword and speech recognisers): per-frame
filterbank features through a Linear + ReLU, a 2-layer GRU whose state is carried across calls
(``h0`` in, ``hn`` out), and a per-frame log-softmax over output units. Frames and batch
dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

DYNAMIC = {"features": {0: "batch", 1: "frames"}, "h0": {1: "batch"}}
OUTPUTS = {"log_probs": {0: "batch", 1: "frames"}, "hn": {1: "batch"}}
SIZES = {"batch": 1, "frames": 40}
ALT = {"batch": 2, "frames": 17}
OPSET = 11
FEATURES, HIDDEN, LAYERS, UNITS = 40, 64, 2, 30


class GRUSpeech(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU())
        self.gru = nn.GRU(HIDDEN, HIDDEN, LAYERS, batch_first=True)
        self.out = nn.Linear(HIDDEN, UNITS)

    def forward(self, features: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, hn = self.gru(self.inp(features), h0)
        return self.out(y).log_softmax(-1), hn


def model() -> nn.Module:
    return GRUSpeech()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    b = sizes["batch"]
    return {"features": rng.standard_normal((b, sizes["frames"], FEATURES)).astype(np.float32),
            "h0": (rng.standard_normal((LAYERS, b, HIDDEN)) * 0.5).astype(np.float32)}
