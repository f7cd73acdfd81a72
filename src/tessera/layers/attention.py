"""Multi-head attention through `F.scaled_dot_product_attention`.

Softmax(Q K^T / sqrt(d) + B) V, where B is an optional additive bias (relative
position bias, shifted-window mask, padding mask). Masks are additive floats
with a large finite negative, never -inf: a row of -inf would give NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, fused: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over (..., N, d) tensors.

    `fused=False` is the explicit reference path, kept for tests and for
    reading; both give the same result.
    """
    if fused:
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Global multi-head self-attention over tokens (B, N, C) with a fused qkv projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x: (B, N, C); bias broadcastable to (B, h, N, N) -> (B, N, C)."""
        q, k, v = rearrange(self.qkv(x), "B N (three h d) -> three B h N d", three=3, h=self.num_heads)
        x = attend(q, k, v, bias, self.fused)
        x = rearrange(x, "B h N d -> B N (h d)")
        return self.proj_drop(self.proj(x))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from x and keys/values from a context.

    Q = W_Q x, K = W_K c, V = W_V c (latent diffusion's conditioning, CoCa's decoder).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True

    def forward(self, x: Tensor, context: Tensor, bias: Tensor | None = None) -> Tensor:
        """x: (B, N, C), context: (B, M, C_ctx), bias broadcastable to (B, h, N, M) -> (B, N, C)."""
        if context.ndim != 3 or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must be (B={x.shape[0]}, M, C_ctx), got shape {tuple(context.shape)}"
            )
        q = rearrange(self.q(x), "B N (h d) -> B h N d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "B M (two h d) -> two B h M d", two=2, h=self.num_heads)
        x = attend(q, k, v, bias, self.fused)
        return self.proj(rearrange(x, "B h N d -> B N (h d)"))
