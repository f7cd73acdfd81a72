"""The transformer feed-forward block: Linear -> GELU -> Linear."""

from __future__ import annotations

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
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        h = self.fc1(x)
        if not torch.is_grad_enabled() and type(self.fc1) is nn.Linear and type(self.act) is nn.GELU:
            # inference: GELU over fc1's fresh output in place, instead of a second 4C-wide tensor
            h = torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        else:
            h = self.act(h)
        return self.drop2(self.fc2(self.drop1(h)))
