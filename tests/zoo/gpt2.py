"""GPT-2-style decoder step with a key/value cache: token and position embeddings (positions
continue after the cached length), pre-LN blocks with fused qkv "Conv1D" projections, the cache
concatenated in front of the new keys and values, a causal mask combined with the attention
mask, tanh-approximated GELU, and the tied LM head. Inputs and outputs follow the exporters'
convention: ``past_key_i`` / ``past_value_i`` in, ``present_key_i`` / ``present_value_i`` out.
GPT-2's structure at width 128, 4 heads, 2 layers; batch, new and cached lengths dynamic."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

LAYERS, HEADS, DIM, VOCAB, MAX_POS = 2, 4, 128, 512, 64
HEAD_DIM = DIM // HEADS
DYNAMIC: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
OUTPUTS: dict[str, dict[int, str]] = {"logits": {0: "batch", 1: "seq"}}
for _i in range(LAYERS):
    DYNAMIC |= {f"past_key_{_i}": {0: "batch", 2: "past"}, f"past_value_{_i}": {0: "batch", 2: "past"}}
    OUTPUTS |= {f"present_key_{_i}": {0: "batch", 2: "total"}, f"present_value_{_i}": {0: "batch", 2: "total"}}
SIZES = {"batch": 1, "seq": 5, "past": 7}
ALT = {"batch": 2, "seq": 1, "past": 12}
OPSET = 14


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Conv1D(nn.Module):
    """GPT-2's projection: ``x @ W + b`` with W stored (in, out)."""

    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nin, nout) * 0.05)
        self.bias = nn.Parameter(torch.zeros(nout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.c_attn, self.c_proj = Conv1D(DIM, 3 * DIM), Conv1D(DIM, DIM)
        self.c_fc, self.c_out = Conv1D(DIM, 4 * DIM), Conv1D(4 * DIM, DIM)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, HEADS, HEAD_DIM).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.c_attn(self.ln1(x)).split(DIM, dim=2)
        k = torch.cat((past_k, self.heads(k)), 2)
        v = torch.cat((past_v, self.heads(v)), 2)
        w = torch.matmul(self.heads(q), k.transpose(-1, -2)) / math.sqrt(HEAD_DIM) + bias
        a = torch.matmul(torch.softmax(w, -1), v).permute(0, 2, 1, 3)
        x = x + self.c_proj(a.reshape(x.shape))
        return x + self.c_out(gelu_new(self.c_fc(self.ln2(x)))), k, v


class GPT2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, DIM), nn.Embedding(MAX_POS, DIM)
        nn.init.normal_(self.wte.weight, std=0.1)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(DIM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seq, past_len = input_ids.shape[1], past[0].shape[2]
        pos = torch.arange(past_len, past_len + seq, dtype=torch.long).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(pos)
        total = past_len + seq
        causal = torch.tril(torch.ones(total, total, dtype=torch.bool))[past_len:total, :total]
        keep = causal[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
        presents: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i], past[2 * i + 1], bias)
            presents += [k, v]
        logits = torch.matmul(self.ln_f(x), self.wte.weight.t())
        return (logits, *presents)


def model() -> nn.Module:
    return GPT2()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    b, s, p = sizes["batch"], sizes["seq"], sizes["past"]
    mask = np.ones((b, p + s), np.int64)
    mask[1:, :2] = 0   # left padding in all but the first sequence
    feeds = {"input_ids": rng.integers(0, VOCAB, (b, s)).astype(np.int64), "attention_mask": mask}
    for i in range(LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{i}"] = rng.standard_normal((b, HEADS, p, HEAD_DIM)).astype(np.float32)
    return feeds
