"""The transformer feed-forward block: Linear -> GELU -> Linear."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor, nn


class Mlp(nn.Module):
    """Two-layer MLP applied to the last axis (the notes' MLP with one hidden layer)."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        # The same activation applied in place, used at inference on fc1's fresh output (one 4C-wide
        # tensor instead of two); None turns it off (tessera.inference fuses GELU into fc1 instead).
        self.act_in_place: Callable[[Tensor], Tensor] | None = functools.partial(torch.ops.aten.gelu_, approximate="none")
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        h = self.fc1(x)
        # in place only on a new tensor (an identity fc1 hands back the caller's input)
        if self.act_in_place is not None and h is not x and not torch.is_grad_enabled():
            h = self.act_in_place(h)
        else:
            h = self.act(h)
        return self.drop2(self.fc2(self.drop1(h)))
