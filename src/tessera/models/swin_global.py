"""The notes' proposal for global attention in Swin (note 004, "How can we introduce global attention?").

Swin's windows never let two distant tokens attend to each other directly. The
notes propose, between consecutive stages: take n random tokens of stage i's
output (C_i channels), project them to keys and values of stage i+1's width,
let every stage-(i+1) output token attend to them, and fuse the result with
the stage output:

    K = S W_K,  V = S W_V           S: n sampled stage-i tokens (n, C_i); K, V: (n, C_{i+1})
    A = Softmax(Q K^T / sqrt(C_{i+1})) V      Q: the stage-(i+1) tokens (N_{i+1}, C_{i+1})
    z = fuse(z, A)                  add, element-wise max, or concat to 2 C_{i+1} and reproject

with n / 4 tokens for the next pair of stages (the grid has 4x fewer tokens).
At 224 px with Swin-T this is 196 of 56 x 56 stage-1 tokens for a 784 x 196
attention matrix: cheap next to the stage itself.

Sampling: uniformly at random without replacement at training (drawn from
torch's global RNG, which the training engine seeds per step, so runs resume
exactly); at evaluation a fixed strided subset (every N/n-th token in
row-major order), so that a prediction does not depend on a seed or on the
other images of the batch, and covers the whole image evenly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Fusion = Literal["add", "max", "concat"]


def sample_tokens(z: Tensor, n: int, training: bool) -> Tensor:
    """n tokens of each image of (B, N, C): random without replacement (training) or strided (eval) -> (B, n, C)."""
    B, N, C = z.shape
    if not 0 < n <= N:
        raise ValueError(f"cannot sample {n} global tokens from a stage of {N} tokens; lower global_tokens "
                         f"(at most {N} here) or use larger images")
    if training:
        idx = torch.rand(B, N, device=z.device).argsort(dim=1)[:, :n]  # a random subset per image
    else:
        idx = torch.div(torch.arange(n, device=z.device) * N, n, rounding_mode="floor").expand(B, n)  # every N/n-th
    return torch.gather(z, 1, idx[..., None].expand(B, n, C))


class SampledGlobalAttention(nn.Module):
    """Attention from a stage's tokens to n sampled tokens of the previous stage, fused with the stage output.

    Args:
        in_dim: C_i, channels of the previous stage (the sampled tokens).
        dim: C_{i+1}, channels of this stage (queries, keys, values, output).
        num_tokens: n, tokens sampled from the previous stage.
        fusion: 'add' (z + A), 'max' (element-wise max), or 'concat' ([z, A] -> linear to C_{i+1}).
    """

    def __init__(self, in_dim: int, dim: int, num_tokens: int, fusion: Fusion = "add") -> None:
        super().__init__()
        if fusion not in ("add", "max", "concat"):
            raise ValueError(f"global_fusion must be 'add', 'max' or 'concat', got {fusion!r}")
        self.num_tokens, self.fusion = num_tokens, fusion
        self.key = nn.Linear(in_dim, dim)  # K = S W_K
        self.value = nn.Linear(in_dim, dim)  # V = S W_V
        self.fuse = nn.Linear(2 * dim, dim) if fusion == "concat" else None

    def forward(self, previous: Tensor, z: Tensor) -> Tensor:
        """previous: stage-i output (B, H, W, C_i); z: stage-(i+1) output (B, H', W', C_{i+1}) -> same shape as z."""
        B, H, W, C = z.shape
        sampled = sample_tokens(previous.flatten(1, 2), self.num_tokens, self.training)  # (B, n, C_i)
        q = z.reshape(B, 1, H * W, C)  # one head: Q is the stage output itself
        k, v = self.key(sampled)[:, None], self.value(sampled)[:, None]  # (B, 1, n, C)
        a = F.scaled_dot_product_attention(q, k, v).reshape(B, H, W, C)  # Softmax(Q K^T / sqrt(C)) V
        if self.fusion == "add":
            return z + a
        if self.fusion == "max":
            return torch.maximum(z, a)
        return self.fuse(torch.cat([z, a], dim=-1))  # concat to 2C, reproject to C
