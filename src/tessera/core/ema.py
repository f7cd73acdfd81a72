"""EMAModel: a running average of a network that can itself run a forward pass.

theta_ema <- d theta_ema + (1 - d) theta, one update per optimizer step. Used
as a momentum teacher (DINO: d follows a cosine from 0.996 to 1), for EMA
sampling of diffusion models, and by the training engine's EMA callback.
Buffers (BatchNorm statistics) are copied, not averaged, as in timm's ModelEmaV3.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMAModel(nn.Module):
    """A frozen copy of `model` updated towards it by `update(model)`.

    Args:
        model: the network to follow; it is deep-copied (the copy never gets gradients).
        decay: the final decay d in [0, 1).
        warmup: use d_n = min(decay, (1 + n) / (10 + n)) after n updates, so the
            first update equals the model exactly and short runs are not dominated
            by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = int(self.num_updates)
        if self.warmup:
            return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta (d: `decay` if given, else the scheduled one)."""
        d = self.current_decay() if decay is None else decay
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = own[name]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1 - d)
            else:
                target.copy_(value)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        """The averaged network's forward."""
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> "EMAModel":
        """The average always runs in eval mode (no dropout, fixed BatchNorm statistics)."""
        return super().train(False)
