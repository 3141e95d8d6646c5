"""MiniLM / DistilBERT-style sentence encoder (as in sentence-transformers' all-MiniLM-L6):
word, position and token-type embeddings with LayerNorm, post-LN BERT layers (separate q/k/v
projections, 12 heads of 32, the additive attention mask (1 - mask) * min, erf GELU), the
tanh pooler, and masked mean pooling. MiniLM-L6-H384's widths, 2 of its 6 layers; batch and
sequence length dynamic (position ids sliced from a buffer)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import MultiHeadAttention

DYNAMIC = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "token_type_ids": {0: "batch", 1: "seq"}}
OUTPUTS = {"embedding": {0: "batch"}, "pooled": {0: "batch"}}
SIZES = {"batch": 1, "seq": 24}
ALT = {"batch": 3, "seq": 11}
OPSET = 14
VOCAB, MAX_POS, HIDDEN, HEADS, LAYERS = 1000, 64, 384, 12, 2


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(HIDDEN, HEADS)
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(), nn.Linear(4 * HIDDEN, HIDDEN))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, bias))
        return self.ln2(x + self.ff(x))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word, self.position = nn.Embedding(VOCAB, HIDDEN), nn.Embedding(MAX_POS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.register_buffer("position_ids", torch.arange(MAX_POS).unsqueeze(0))
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.pooler = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.position_ids[:, : input_ids.shape[1]]
        x = self.ln(self.word(input_ids) + self.position(pos) + self.token_type(token_type_ids))
        m = attention_mask[:, None, None, :].to(x.dtype)
        bias = (1.0 - m) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, bias)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        mean = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return mean, torch.tanh(self.pooler(x[:, 0]))


def model() -> nn.Module:
    return Encoder()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    b, s = sizes["batch"], sizes["seq"]
    mask = np.ones((b, s), np.int64)
    for i in range(b):
        mask[i, s - i * 3:] = 0    # padded sequences of different lengths
    types = np.zeros((b, s), np.int64)
    types[:, s // 2:] = 1
    return {"input_ids": rng.integers(0, VOCAB, (b, s)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": types}
