"""Small torch models for export tests, loadable as ``tests/tiny_models.py:<function>``.

Each function returns ``(nn.Module, example_inputs)`` as ``onnx-amp export`` expects.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int = 16, h: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class SelfAttention(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.scale = d ** -0.5

    def forward(self, x):
        att = (self.q(x) @ self.k(x).transpose(-1, -2)) * self.scale
        return x + self.o(att.softmax(-1) @ self.v(x))


class TinyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = SelfAttention()
        self.mlp = Block()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.mlp(self.attn(x)))


def tiny_mlp():
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(3, 16),)


def tiny_attention():
    torch.manual_seed(0)
    return TinyAttention().eval(), {"x": torch.randn(2, 5, 16)}
