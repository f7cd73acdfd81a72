"""Multi-head attention through `F.scaled_dot_product_attention` (or, timed per shape, explicit matmuls).

Softmax(Q K^T / sqrt(d) + B) V, where B is an optional additive bias (relative
position bias, shifted-window mask, padding mask). Masks are additive floats
with a large finite negative, never -inf: a row of -inf would give NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.layers.kernel_choice import FastestKernel, pow2_bucket, timing_applies


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v through torch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v as two batched matmuls and a softmax (the reference path).

    On CPUs with bf16 arithmetic its bf16 matmuls can beat the fused kernel
    (measured 1.2-1.6x for ViT and Swin shapes on a Zen 5), at the cost of
    rounding the scores to bf16, as transformers' eager attention does.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


class AttentionChoices(FastestKernel):
    """The faster of the fused kernel and the explicit path per attention shape, timed once (`attend(fused="timed")`)."""

    def __init__(self, repeats: int = 5) -> None:
        super().__init__({"sdpa": sdpa_attention, "explicit": explicit_attention}, repeats)

    @staticmethod
    def key(q: Tensor, k: Tensor, bias: Tensor | None) -> tuple:
        """(batch x heads rounded up to a power of two, N, M, d, dtype, bias shape): the case a choice is kept for."""
        *lead, n, d = q.shape
        return (pow2_bucket(q.numel() // max(1, n * d)), n, k.shape[-2], d, q.dtype,
                None if bias is None else tuple(bias.shape))


ATTENTION_CHOICES = AttentionChoices()


def attention_choices() -> list[dict]:
    """The attention kernels `attend(fused="timed")` chose in this process, one row per case."""
    return [{"batch_heads": k[0], "queries": k[1], "keys": k[2], "head_dim": k[3], "dtype": str(k[4]).replace("torch.", ""),
             "bias": k[5], "kernel": choice, **{f"{n}_us": round(t * 1e6, 1) for n, t in times.items()}}
            for k, (choice, times) in ATTENTION_CHOICES.table.items()]


LOW_PRECISION = (torch.bfloat16, torch.float16)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, fused: bool | str = "auto") -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over (..., N, d) tensors.

    `fused`: True, torch's fused kernel; False, the explicit reference path
    (kept for tests and for reading); "timed" (set by `optimize_for_inference`):
    whichever of the two is faster for this shape and dtype on this machine,
    timed at the first call; "auto" (the modules' default): "timed" for bf16 /
    fp16 inputs, where torch's fused CPU kernel can lose to explicit bf16
    matmuls, the fused kernel for fp32. The timed choice applies only without
    autograd or tracing, on CPU (the fused kernel otherwise). All agree up to rounding.
    """
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if fused == "auto":
        fused = "timed" if q.dtype in LOW_PRECISION else True
    if fused == "timed":
        if timing_applies(q):
            return ATTENTION_CHOICES.run(AttentionChoices.key(q, k, bias), q, k, v, bias)
        fused = True
    return sdpa_attention(q, k, v, bias) if fused else explicit_attention(q, k, v, bias)


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
        self.fused: bool | str = "auto"  # see `attend`

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
        self.fused: bool | str = "auto"  # see `attend`

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
