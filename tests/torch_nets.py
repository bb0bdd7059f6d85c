"""PyTorch modules the TorchScript suites script, train through stoker and load back."""

from __future__ import annotations

import torch
from torch import nn


class NormNet(nn.Module):
    """BatchNorm's running statistics are buffers, not parameters."""

    def __init__(self, inputs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
