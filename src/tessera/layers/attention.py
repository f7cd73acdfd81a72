"""Multi-head attention through `F.scaled_dot_product_attention` (or, timed per shape, explicit matmuls).

Softmax(Q K^T / sqrt(d) + B) V, where B is an optional additive bias (relative
position bias, shifted-window mask, padding mask). Masks are additive floats
with a large finite negative, never -inf: a row of -inf would give NaN.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.layers.kernel_choice import FastestKernel, pow2_bucket, tracing


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v through torch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v as two batched matmuls and a softmax (the reference path).

    On CPUs with bf16 arithmetic its bf16 matmuls can beat the fused kernel
    (measured 1.2-1.6x for ViT and Swin shapes on a Zen 5), at the cost of
    rounding the scores to bf16, as transformers' eager attention does.
    """
    scale = q.shape[-1] ** -0.5
    if bias is None:
        scores = (q * scale) @ k.transpose(-2, -1)
    else:  # bias + scale QK^T in one pass; backward keeps q itself, not a scaled copy of it
        scores = torch.add(bias, q @ k.transpose(-2, -1), alpha=scale)
    return scores.softmax(dim=-1) @ v


class AttentionChoices(FastestKernel):
    """The faster of the fused kernel and the explicit path per attention shape, timed once (`attend(fused="timed")`)."""

    def __init__(self, repeats: int = 5) -> None:
        super().__init__({"sdpa": sdpa_attention, "explicit": explicit_attention}, repeats)

    @staticmethod
    def key(q: Tensor, k: Tensor, bias: Tensor | None) -> tuple:
        """(batch x heads rounded up to a power of two, N, M, d, dtype, bias shape): the case a choice is kept for."""
        n, d = q.shape[-2:]
        return (pow2_bucket(q.numel() // max(1, n * d)), n, k.shape[-2], d, q.dtype,
                None if bias is None else tuple(bias.shape))


class TrainingAttentionChoices(AttentionChoices):
    """The same choice for attention under autograd: each kernel timed forward + backward.

    In bf16 on CPU the fused kernel's backward can be several times slower than
    autograd through the explicit matmuls (measured 1.6-1.9x for ViT-S shapes,
    7x for Swin's masked windows, on a Zen 5); in fp32 it is not timed (the
    fused kernel also saves the N x N matrix the explicit path keeps for backward).
    """

    def time_kernel(self, name: str, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> float:
        """Seconds of one forward + backward of kernel `name` on detached copies (the caller's graph is untouched)."""
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in (q, k, v, bias)]
        with torch.enable_grad():
            start = time.perf_counter()
            out = self.kernels[name](*leaves)
            out.backward(torch.ones_like(out))
            return time.perf_counter() - start


ATTENTION_CHOICES = AttentionChoices()
TRAINING_ATTENTION_CHOICES = TrainingAttentionChoices()


def attention_choices() -> list[dict]:
    """The attention kernels `attend(fused="timed")` chose in this process, one row per case (inference, training)."""
    return [{"batch_heads": k[0], "queries": k[1], "keys": k[2], "head_dim": k[3], "dtype": str(k[4]).replace("torch.", ""),
             "bias": k[5], "backward": chooser is TRAINING_ATTENTION_CHOICES, "kernel": choice,
             **{f"{n}_us": round(t * 1e6, 1) for n, t in times.items()}}
            for chooser in (ATTENTION_CHOICES, TRAINING_ATTENTION_CHOICES)
            for k, (choice, times) in chooser.table.items()]


LOW_PRECISION = (torch.bfloat16, torch.float16)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, fused: bool | str = "auto") -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over (..., N, d) tensors.

    `fused`: True, torch's fused kernel; False, the explicit reference path
    (kept for tests and for reading); "timed" (set by `optimize_for_inference`):
    whichever of the two is faster for this shape and dtype on this machine,
    timed at the first call (forward + backward when autograd records it);
    "auto" (the modules' default): "timed" for bf16 / fp16 inputs, where
    torch's fused CPU kernel can lose to explicit bf16 matmuls, the fused kernel
    for fp32 (but the explicit path on CPU when the bias needs a gradient, where
    torch runs the same math unfused and keeps more for backward). The timed
    choice applies on CPU outside tracing (the fused kernel otherwise). All
    agree up to rounding.
    """
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if fused == "auto":
        # A bias that needs a gradient sends torch's CPU SDPA to its unfused math fallback: the same
        # computation as the explicit path, which keeps less for backward (not a scaled copy of q).
        math_fallback = (bias is not None and bias.requires_grad and torch.is_grad_enabled()
                         and q.device.type == "cpu" and not tracing())
        fused = "timed" if q.dtype in LOW_PRECISION else not math_fallback
    if fused == "timed":
        if q.device.type == "cpu" and not tracing():
            needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
            chooser = TRAINING_ATTENTION_CHOICES if needs_grad else ATTENTION_CHOICES
            return chooser.run(AttentionChoices.key(q, k, bias), q, k, v, bias)
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
