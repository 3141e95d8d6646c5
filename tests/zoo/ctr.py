"""DLRM-style click-through-rate model: dense features through a bottom MLP, one embedding
table per categorical field (Gather), pairwise dot-product interaction of all feature vectors
(batched matmul, upper triangle taken by a constant index), concatenation with the dense
vector, a top MLP and a sigmoid. 13 dense and 8 categorical fields (Criteo's layout, smaller
tables); batch dynamic."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

DYNAMIC = {"dense": {0: "batch"}, "sparse": {0: "batch"}}
OUTPUTS = {"ctr": {0: "batch"}}
SIZES = {"batch": 4}
ALT = {"batch": 1}
OPSET = 13
DENSE, FIELDS, TABLE, DIM = 13, 8, (1000, 50, 300, 20, 800, 7, 120, 64), 16


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DLRM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom = nn.Sequential(mlp((DENSE, 64, 32, DIM)), nn.ReLU())
        self.tables = nn.ModuleList(nn.Embedding(n, DIM) for n in TABLE)
        n = FIELDS + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pairs", rows * n + cols)
        self.top = mlp((DIM + len(rows), 64, 32, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        feats = torch.stack([x, *(t(sparse[:, i]) for i, t in enumerate(self.tables))], 1)
        inter = torch.bmm(feats, feats.transpose(1, 2)).flatten(1)[:, self.pairs]
        return torch.sigmoid(self.top(torch.cat((x, inter), 1)))


def model() -> nn.Module:
    return DLRM()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    b = sizes["batch"]
    sparse = np.stack([rng.integers(0, n, b) for n in TABLE], 1).astype(np.int64)
    return {"dense": np.log1p(rng.exponential(3.0, (b, DENSE))).astype(np.float32), "sparse": sparse}
