"""ShuffleNetV2 x0.5: channel split (chunk), a branch of 1x1 / depthwise 3x3 / 1x1 convs,
Concat and the channel shuffle (reshape to groups, transpose, flatten); stride-2 units run two
branches. 96x96 input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from tests.zoo.blocks import ConvBNAct

DYNAMIC = {"input": {0: "batch"}}
OUTPUTS = {"logits": {0: "batch"}}
SIZES = {"batch": 1}
ALT = {"batch": 3}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.left = nn.Sequential(ConvBNAct(cin, cin, 3, stride, groups=cin, act=None),
                                      ConvBNAct(cin, branch, act=nn.ReLU))
        right_in = cin if stride > 1 else branch
        self.right = nn.Sequential(ConvBNAct(right_in, branch, act=nn.ReLU),
                                   ConvBNAct(branch, branch, 3, stride, groups=branch, act=None),
                                   ConvBNAct(branch, branch, act=nn.ReLU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), 1)
        else:
            out = torch.cat((self.left(x), self.right(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        chans, repeats = (24, 48, 96, 192, 1024), (4, 8, 4)
        self.stem = nn.Sequential(ConvBNAct(3, chans[0], 3, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = chans[0]
        for cout, n in zip(chans[1:4], repeats, strict=True):
            layers += [Unit(cin, cout, 2), *(Unit(cout, cout, 1) for _ in range(n - 1))]
            cin = cout
        self.stages = nn.Sequential(*layers)
        self.conv5 = ConvBNAct(cin, chans[4], act=nn.ReLU)
        self.fc = nn.Linear(chans[4], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.stages(self.stem(x))).mean((2, 3)))


def model() -> nn.Module:
    return ShuffleNetV2()


def inputs(rng: np.random.Generator, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((sizes["batch"], 3, 96, 96)).astype(np.float32)}
