"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) as a closure the samplers call.

    eps~(z_t, t, c) = eps(z_t, t, null) + s (eps(z_t, t, c) - eps(z_t, t, null))

s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes the sample
towards what distinguishes c. Both halves go through the UNet in one batched forward
(2B rows); s = 0 and s = 1 need only their half. The closure has the samplers'
signature `(x_t, t) -> eps`, so DDPMSampler and DDIMSampler run it unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["check_guidance", "guided_denoiser"]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, t, context) -> eps


def check_guidance(scale: float) -> float:
    """The scale as a float; ValueError unless it is a finite number >= 0."""
    s = float(scale)
    if not s >= 0 or s == float("inf"):
        raise ValueError(f"guidance scale must be a finite number >= 0 (0: unconditional, 1: conditional), got {scale}")
    return s


def guided_denoiser(model: Denoiser, context: Tensor, null_context: Tensor, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The guided eps~(x_t, t) for a fixed condition.

    Args:
        model: eps_theta(x_t, t, context).
        context: (B, M, d_r) tau_theta(y).
        null_context: (B, M, d_r) the null condition.
        scale: s >= 0.

    Returns:
        A function (x_t (B, C, h, w), t (B,)) -> eps~ (B, C, h, w).
    """
    s = check_guidance(scale)
    if context.shape != null_context.shape:
        raise ValueError(f"context {tuple(context.shape)} and null context {tuple(null_context.shape)} differ in shape")
    if s == 1.0:
        return lambda x, t: model(x, t, context)
    if s == 0.0:
        return lambda x, t: model(x, t, null_context)
    both = torch.cat([null_context, context])                               # (2B, M, d_r): [null; c]

    def eps(x: Tensor, t: Tensor) -> Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), both)             # one forward for both halves
        eps_u, eps_c = out.chunk(2)
        return eps_u + s * (eps_c - eps_u)                                  # eps_u + s (eps_c - eps_u)

    return eps
