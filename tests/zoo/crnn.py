"""CRNN text recogniser (as in PaddleOCR's rec models and EasyOCR): a VGG-style conv stack that
collapses the height (asymmetric 2x1 pools), the feature column sequence over the width, two
bidirectional LSTM layers, and a linear CTC head with log-softmax over the alphabet plus blank.
Input 1x32xW grey text lines; the width is dynamic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"x": {0: "batch", 3: "width"}}
OUTPUTS = {"logits": {0: "steps", 1: "batch"}}
SIZES = {"batch": 1, "width": 128}
ALT = {"batch": 2, "width": 200}
OPSET = 11
ALPHABET = 37


class CRNN(nn.Module):
    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            ConvBNAct(1, 16, 3, act=nn.ReLU), nn.MaxPool2d(2, 2),                   # 16 x W/2
            ConvBNAct(16, 32, 3, act=nn.ReLU), nn.MaxPool2d(2, 2),                  # 8 x W/4
            ConvBNAct(32, 48, 3, act=nn.ReLU), ConvBNAct(48, 48, 3, act=nn.ReLU),
            nn.MaxPool2d((2, 1), (2, 1)),                                           # 4 x W/4
            ConvBNAct(48, 64, 3, act=nn.ReLU), ConvBNAct(64, 64, 3, act=nn.ReLU),
            nn.MaxPool2d((2, 1), (2, 1)),                                           # 2 x W/4
            ConvBNAct(64, 64, 2, act=nn.ReLU),                                      # 1 x W/4 (pad 0)
        )
        self.rnn = nn.LSTM(64, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, ALPHABET)
        nn.init.normal_(self.fc.weight, std=0.5)   # a trained head's confident logits, not ~uniform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x).squeeze(2).permute(2, 0, 1)       # steps, batch, channels
        y, _ = self.rnn(f)
        return self.fc(y).log_softmax(-1)


def model() -> nn.Module:
    return CRNN()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"x": rng.random((sizes["batch"], 1, 32, sizes["width"]), dtype=np.float32)}
