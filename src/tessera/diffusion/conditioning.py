"""Conditioning encoders tau_theta(y) -> (B, M, d_r) for cross-attention (LDM sec. 3.3, notes 002).

Both have a learned null condition, the "y = empty" of classifier-free guidance
(Ho & Salimans 2022, arXiv:2207.12598): training replaces the condition by it with
probability p_uncond, sampling uses it for the unconditional half.

- `ClassEmbedder`: a class label -> one token (M = 1), an embedding table with one extra row
  for the null class.
- `TextEncoder`: token rows from `tessera.data.text.TextTokenizer` ([BOS] ... [EOS] [PAD]...)
  -> (B, L, d_r) through a small bidirectional transformer (pre-LN, [PAD] keys masked out).
  The tokenizer is byte-level BPE by default, so any prompt encodes: characters never seen in
  training are spelt as their UTF-8 bytes (with WordPiece they become [UNK]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tessera.layers import Attention, Mlp

__all__ = ["ClassEmbedder", "ConditionEncoder", "TextEncoder", "TextEncoderConfig"]

NEG = -1e4  # additive mask of [PAD] keys: large and finite (a row of -inf would give NaN)


class ConditionEncoder(nn.Module):
    """What LatentDiffusion needs of tau_theta: `forward(y) -> (B, M, d_r)`, `null(B)`, `context_len`, `context_dim`."""

    context_len: int
    context_dim: int

    def null(self, batch_size: int) -> Tensor:
        """The learned null context (B, M, d_r) of classifier-free guidance."""
        raise NotImplementedError

    def check(self, y: Tensor) -> None:
        """ValueError naming expected vs found for a bad condition (before any compute)."""
        raise NotImplementedError

    def spec(self) -> dict:
        """Constructor arguments (JSON), to rebuild the encoder from a run folder."""
        raise NotImplementedError


class ClassEmbedder(ConditionEncoder):
    """tau(y) = E[y]: class ids (B,) -> (B, 1, d_r); row `num_classes` of E is the null class."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes} and {dim}")
        self.num_classes = num_classes
        self.context_len, self.context_dim = 1, dim
        self.embed = nn.Embedding(num_classes + 1, dim)

    def spec(self) -> dict:
        return {"type": "class", "num_classes": self.num_classes, "dim": self.context_dim}

    def check(self, y: Tensor) -> None:
        if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"class labels must be an integer tensor of shape (B,), got {got}")
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            bad = y[(y < 0) | (y >= self.num_classes)][:4].tolist()
            raise ValueError(f"class ids must lie in [0, {self.num_classes}), got {bad}")

    def forward(self, y: Tensor) -> Tensor:
        """y: (B,) int64 in [0, num_classes) -> (B, 1, d_r)."""
        self.check(y)
        return self.embed(y)[:, None]

    def null(self, batch_size: int) -> Tensor:
        return self.embed.weight[self.num_classes].expand(batch_size, 1, -1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """vocab_size: the text tokenizer's; context_len: its row length L; dim: d_r."""

    vocab_size: int = 400
    context_len: int = 8
    dim: int = 64
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.vocab_size < 1 or self.context_len < 1 or self.depth < 0:
            raise ValueError(f"bad TextEncoderConfig sizes: {self}")


class _Block(nn.Module):
    """x = x + Attn(LN(x), pad mask); x = x + MLP(LN(x)). (B, L, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class TextEncoder(ConditionEncoder):
    """tau(y): token rows (B, L) -> (B, L, d_r); a learned null context (L, d_r) for guidance."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        c = self.config = config
        self.context_len, self.context_dim = c.context_len, c.dim
        self.tok_embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.context_len, c.dim))
        self.blocks = nn.ModuleList(_Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.null_context = nn.Parameter(torch.zeros(1, c.context_len, c.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.null_context, std=0.02)

    def spec(self) -> dict:
        from dataclasses import asdict

        return {"type": "text", **asdict(self.config)}

    def check(self, y: Tensor) -> None:
        c = self.config
        if not isinstance(y, Tensor) or y.ndim != 2 or y.is_floating_point() or y.dtype == torch.bool:
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"text must be token ids of shape (B, {c.context_len}) (TextTokenizer.encode), got {got}")
        if y.shape[1] != c.context_len:
            raise ValueError(f"token rows must have length {c.context_len}, got {y.shape[1]}")
        if y.numel() and (y.min() < 0 or y.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size}), got min {int(y.min())}, max {int(y.max())}")

    def forward(self, y: Tensor) -> Tensor:
        """y: (B, L) token ids -> (B, L, d_r)."""
        self.check(y)
        bias = torch.zeros(y.shape, dtype=self.pos_embed.dtype, device=y.device)
        bias = bias.masked_fill(y == self.config.pad_id, NEG)[:, None, None, :]  # (B, 1, 1, L): no attention to [PAD]
        x = self.tok_embed(y) + self.pos_embed                             # (B, L, C)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def null(self, batch_size: int) -> Tensor:
        return self.null_context.expand(batch_size, -1, -1)


def build_condition_encoder(spec: dict) -> ConditionEncoder:
    """The encoder described by `spec()` (a run's ldm.json)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "class":
        return ClassEmbedder(spec["num_classes"], spec["dim"])
    if kind == "text":
        return TextEncoder(TextEncoderConfig(**spec))
    raise ValueError(f"unknown condition encoder type {kind!r}; expected 'class' or 'text'")
