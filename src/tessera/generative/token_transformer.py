"""A transformer over a tokenizer's code grid: masked token modelling and next-token prediction.

Notes 003 ("Recipe for Large World Models", step 2: "train a transformer with Masked
Modeling or Predict Next Token task in the latent space"):

- "masked" (MaskGIT, Chang et al. 2022, arXiv:2202.04200): bidirectional attention; a
  fraction gamma(r) = cos(pi r / 2), r ~ U(0, 1), of the codes is replaced by [MASK] and the
  loss is the cross-entropy on those positions. Sampling starts from all [MASK] and
  decodes in T parallel steps, keeping the most confident predictions (`maskgit_sample`).
- "causal" (image GPT / VQGAN's transformer): p(c_i | prefix, c_<i), causal attention with a
  KV cache at sampling (`generate`), temperature / top-k / top-p.

Position 0 of every sequence is a prefix token: the class embedding (class-conditional) or,
for the row `num_classes` of the same table, the null / start token. The multimodal
sequences of `tessera.generative.multimodal` run through the same model with a joint vocabulary.
Tokens are (B, N) int64; activations (B, N, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import register_model
from tessera.layers import Mlp

__all__ = [
    "KVCache",
    "TokenOutput",
    "TokenTransformer",
    "TokenTransformerConfig",
    "cosine_mask_ratio",
    "generate",
    "maskgit_mask_counts",
    "maskgit_sample",
    "random_mask",
    "sample_logits",
]

NEG = -1e4  # large finite negative for masked logits / attention (never a row of -inf)


@dataclass(frozen=True)
class TokenTransformerConfig:
    """A transformer over N = seq_len tokens from a vocabulary of vocab_size.

    Attributes:
        vocab_size: K, tokens the model reads and predicts (the codebook size, or a joint vocabulary).
        seq_len: N, tokens per sequence (h x w of the code grid), without the prefix token.
        objective: "masked" (MaskGIT, bidirectional) or "causal" (next token).
        num_classes: class-conditional prefix tokens (0: only the null / start token).
        dim: width C; depth: blocks; heads: attention heads; mlp_ratio: MLP width / C.
        dropout: on attention output and MLP.
    """

    vocab_size: int = 512
    seq_len: int = 64
    objective: Literal["masked", "causal"] = "masked"
    num_classes: int = 10
    dim: int = 256
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in ("masked", "causal"):
            raise ValueError(f"objective must be 'masked' or 'causal', got {self.objective!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.vocab_size < 2 or self.seq_len < 1 or self.num_classes < 0 or self.depth < 1:
            raise ValueError(
                f"need vocab_size >= 2, seq_len >= 1, num_classes >= 0, depth >= 1; got {self.vocab_size}, "
                f"{self.seq_len}, {self.num_classes}, {self.depth}"
            )

    @property
    def mask_id(self) -> int:
        """Id of [MASK] in the input embedding (masked objective): one past the vocabulary."""
        return self.vocab_size


@dataclass
class TokenOutput:
    """logits (B, N, K) for each of the N token positions; loss: mean cross-entropy on the targets."""

    logits: Tensor
    loss: Tensor | None = None


# ------------------------------------------------------------------ KV cache


class KVCache:
    """Keys and values of every layer for the positions seen so far: layer -> (B, h, n, d) pair."""

    def __init__(self, depth: int) -> None:
        self.k: list[Tensor | None] = [None] * depth
        self.v: list[Tensor | None] = [None] * depth

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's (B, h, n_new, d) keys / values; return all of them."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


# ------------------------------------------------------------------ blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention, bidirectional or causal, optionally reading / filling a KV cache."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """x: (B, n, C) new positions -> (B, n, C); with a cache they attend to the cached ones too."""
        q, k, v = rearrange(self.qkv(x), "B N (three h d) -> three B h N d", three=3, h=self.heads)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.extend(layer, k, v)                              # (B, h, past + n, d)
        n, total = q.shape[2], k.shape[2]
        if causal and n > 1:
            # query i (absolute position past + i) sees keys 0 .. past + i
            keep = torch.ones(n, total, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            out = F.scaled_dot_product_attention(q, k, v)                 # one new query sees everything cached
        return self.drop(self.proj(rearrange(out, "B h N d -> B N (h d)")))


class Block(nn.Module):
    """x = x + Attn(LN(x)); x = x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)

    def forward(self, x: Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.norm1(x), causal, cache, layer)
        return x + self.mlp(self.norm2(x))


# ------------------------------------------------------------------ model


class TokenTransformer(TesseraModel):
    """p(tokens | prefix): (B, N) int64 tokens, (B,) classes -> logits (B, N, K) [+ loss]."""

    family = "token_transformer"
    head_keys = ("head.",)

    def __init__(self, config: TokenTransformerConfig | None = None) -> None:
        config = config or TokenTransformerConfig()
        super().__init__(config)
        c = config
        self.grad_checkpointing = False
        self.tok_embed = nn.Embedding(c.vocab_size + (c.objective == "masked"), c.dim)  # + [MASK]
        self.class_embed = nn.Embedding(c.num_classes + 1, c.dim)  # row num_classes: null / start
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len + 1, c.dim))  # prefix + N tokens
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The token sequence as a (1, 1, N) strip, for tools that print an input shape (`tessera info`)."""
        return (1, 1, self.config.seq_len)

    @property
    def causal(self) -> bool:
        return self.config.objective == "causal"

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """(tokens, classes, target_mask): random codes, classes, and for "masked" every other position masked."""
        c = self.config
        tokens = torch.randint(0, c.vocab_size, (batch_size, c.seq_len))
        y = torch.randint(0, c.num_classes, (batch_size,)) if c.num_classes else None
        mask = torch.zeros(batch_size, c.seq_len, dtype=torch.bool)
        mask[:, ::2] = True
        return (tokens, y, mask)

    # ------------------------------------------------------------------ checks
    def check_tokens(self, tokens: Tensor, max_len: int | None = None) -> None:
        c = self.config
        max_len = c.seq_len if max_len is None else max_len
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor (B, N <= {max_len}), got {got}")
        if tokens.shape[1] > max_len:
            raise ValueError(f"at most {max_len} tokens fit this model (seq_len), got {tokens.shape[1]}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= c.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {c.vocab_size}), got min {int(tokens.min())}, max {int(tokens.max())}"
            )

    def prefix(self, y: Tensor | None, B: int, device: torch.device) -> Tensor:
        """The prefix token ids (B,): the class, or the null / start row when y is None."""
        K = self.config.num_classes
        if y is None:
            return torch.full((B,), K, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.shape != (B,) or y.is_floating_point():
            raise ValueError(f"class labels must be an integer tensor of shape ({B},), got {getattr(y, 'shape', y)}")
        if y.numel() and (y.min() < 0 or y.max() >= max(K, 1) or K == 0):
            raise ValueError(f"class ids must lie in [0, {K}) for this model, got {y[(y < 0) | (y >= K)][:4].tolist()}")
        return y.to(device)

    # ------------------------------------------------------------------ forward
    def embed(self, tokens: Tensor, y: Tensor | None, start: int = 0, with_prefix: bool = True) -> Tensor:
        """Token (+ prefix) embeddings plus positions: (B, n) -> (B, [1 +] n, C); `start` = position of tokens[:, 0] - 1."""
        B, n = tokens.shape
        x = self.tok_embed(tokens)
        if with_prefix:
            x = torch.cat([self.class_embed(self.prefix(y, B, tokens.device))[:, None], x], dim=1)
            return x + self.pos_embed[:, : n + 1]
        return x + self.pos_embed[:, start + 1 : start + 1 + n]

    def backbone(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal, cache, i)
        return self.head(self.norm(x))

    def forward(self, tokens: Tensor, y: Tensor | None = None, target_mask: Tensor | None = None) -> TokenOutput:
        """Logits and loss.

        Args:
            tokens: (B, N) codes (int64 in [0, vocab_size)).
            y: (B,) class ids, or None for the null / start prefix.
            target_mask: (B, N) bool. "masked": the positions replaced by [MASK] and scored
                (required). "causal": the positions scored (None: all), e.g. the image half
                of a multimodal sequence.

        Returns:
            TokenOutput: logits (B, N, K) (causal: position i predicts token i from the prefix
            and tokens < i), loss = mean cross-entropy over the scored positions.
        """
        self.check_tokens(tokens, self.config.seq_len)
        B, N = tokens.shape
        if target_mask is not None and (target_mask.shape != (B, N) or target_mask.dtype != torch.bool):
            raise ValueError(f"target_mask must be a bool tensor of shape ({B}, {N}), got {tuple(target_mask.shape)} {target_mask.dtype}")
        if self.causal:
            x = self.embed(tokens[:, :-1], y)                               # (B, N, C): prefix, c_0 .. c_{N-2}
            logits = self.backbone(x)                                       # position i predicts c_i
        else:
            if target_mask is None:
                raise ValueError("the masked objective needs target_mask (B, N): the positions to hide and predict")
            inp = tokens.masked_fill(target_mask, self.config.mask_id)      # c_i -> [MASK] where masked
            logits = self.backbone(self.embed(inp, y))[:, 1:]               # drop the prefix position
        scored = target_mask if target_mask is not None else torch.ones_like(tokens, dtype=torch.bool)
        ce = F.cross_entropy(logits.transpose(1, 2).float(), tokens, reduction="none")  # (B, N)
        loss = (ce * scored).sum() / scored.sum().clamp_min(1)
        return TokenOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def next_logits(self, tokens: Tensor, y: Tensor | None, cache: KVCache | None = None) -> Tensor:
        """Logits (B, K) of the token after `tokens` (B, n) (causal). With a cache, only tokens not yet
        in it are run (the first call runs the prefix and all of `tokens`)."""
        B, n = tokens.shape
        if cache is None or cache.length == 0:
            x = self.embed(tokens, y)                                       # prefix + n tokens
        else:
            seen = cache.length - 1                                         # tokens already cached (minus the prefix)
            x = self.embed(tokens[:, seen:], None, start=seen, with_prefix=False)
        return self.backbone(x, cache)[:, -1]


# ------------------------------------------------------------------ sampling


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row from logits (B, K): softmax(logits / T), restricted to the top-k and the
    smallest set whose probability reaches top_p (nucleus, Holtzman et al. 2019). T = 0 is argmax."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG)
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p         # tokens after the nucleus is full
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(
    model: TokenTransformer,
    num_tokens: int,
    y: Tensor | None = None,
    prompt: Tensor | None = None,
    batch_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Next-token sampling: prompt (B, P) -> (B, P + num_tokens), one token at a time.

    Args:
        model: a causal TokenTransformer.
        num_tokens: tokens to add.
        y: (B,) class ids for the prefix (None: the null / start token).
        prompt: (B, P) tokens to continue (None: start from the prefix alone).
        batch_size: B when there is neither y nor prompt.
        allowed: [lo, hi) of token ids that may be drawn (a modality's range in a joint vocabulary).
        use_cache: keep keys / values (KV cache) instead of rerunning the whole sequence per token;
            both give the same tokens for the same generator.
    """
    if not model.causal:
        raise ValueError("generate needs a causal model (objective='causal'); use maskgit_sample for 'masked'")
    device = model.pos_embed.device
    B = prompt.shape[0] if prompt is not None else y.shape[0] if y is not None else (batch_size or 1)
    tokens = prompt.to(device) if prompt is not None else torch.zeros(B, 0, dtype=torch.long, device=device)
    if tokens.shape[1] + num_tokens > model.config.seq_len:
        raise ValueError(
            f"prompt of {tokens.shape[1]} + {num_tokens} new tokens exceeds the model's seq_len {model.config.seq_len}"
        )
    model.check_tokens(tokens)
    model.prefix(y, B, device)  # checks the classes before any compute
    was_training = model.training
    model.eval()
    cache = KVCache(len(model.blocks)) if use_cache else None
    try:
        for _ in range(num_tokens):
            logits = model.next_logits(tokens, y, cache)                   # (B, K)
            if allowed is not None:
                lo, hi = allowed
                ids = torch.arange(logits.shape[-1], device=device)
                logits = logits.masked_fill((ids < lo) | (ids >= hi), NEG)
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    finally:
        model.train(was_training)
    return tokens


def cosine_mask_ratio(r: Tensor | float) -> Tensor:
    """MaskGIT's schedule gamma(r) = cos(pi r / 2): the fraction masked at progress r in [0, 1]."""
    return torch.cos(math.pi / 2 * torch.as_tensor(r, dtype=torch.float64))


def maskgit_mask_counts(N: int, steps: int) -> list[int]:
    """Tokens still masked after each of the T decoding steps: floor(N gamma((t+1)/T)), kept strictly
    decreasing (at least one token revealed per step) and 0 after the last."""
    if steps < 1 or N < 1 or steps > N:
        raise ValueError(f"need 1 <= steps <= N, got steps={steps}, N={N}")
    counts, prev = [], N
    for t in range(steps):
        n = int(math.floor(N * float(cosine_mask_ratio((t + 1) / steps)) + 1e-9)) if t < steps - 1 else 0
        n = max(0, min(n, prev - 1))
        counts.append(n)
        prev = n
    return counts


def random_mask(tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """MaskGIT training mask (B, N) bool: r ~ U(0, 1), ceil(gamma(r) N) random positions per row (>= 1)."""
    B, N = tokens.shape
    r = torch.rand(B, generator=generator)
    n = torch.ceil(cosine_mask_ratio(r) * N).clamp(1, N).long()                   # masked per row
    scores = torch.rand(B, N, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)                                   # random rank of each position
    return (ranks < n[:, None]).to(tokens.device)


@torch.no_grad()
def maskgit_sample(
    model: TokenTransformer,
    batch_size: int | None = None,
    y: Tensor | None = None,
    steps: int = 8,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MaskGIT's iterative parallel decoding (Chang et al. 2022, sec. 3.2): all [MASK] -> (B, N) codes.

    At step t: predict every masked token, draw c_i ~ p_i (temperature), take its probability
    as the confidence (already known tokens: +inf), add Gumbel noise scaled by
    choice_temperature x (1 - (t+1)/T) and re-mask the `maskgit_mask_counts(N, T)[t]` least
    confident positions.
    """
    if model.causal:
        raise ValueError("maskgit_sample needs a masked model (objective='masked'); use generate for 'causal'")
    c = model.config
    device = model.pos_embed.device
    B = y.shape[0] if y is not None else (batch_size or 1)
    model.prefix(y, B, device)
    counts = maskgit_mask_counts(c.seq_len, steps)
    tokens = torch.zeros(B, c.seq_len, dtype=torch.long, device=device)
    masked = torch.ones(B, c.seq_len, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        for t, n_keep_masked in enumerate(counts):
            logits = model(tokens, y, masked).logits.float()                          # (B, N, K)
            probs = (logits / max(temperature, 1e-6)).softmax(dim=-1)
            draw = torch.multinomial(probs.reshape(-1, c.vocab_size).cpu(), 1, generator=generator)
            draw = draw.view(B, c.seq_len).to(device)
            draw = torch.where(masked, draw, tokens)                                  # known tokens stay
            conf = probs.gather(-1, draw[..., None]).squeeze(-1).log()
            u = torch.rand(B, c.seq_len, generator=generator).to(device).clamp(1e-20, 1.0)
            gumbel = -torch.log(-torch.log(u))
            conf = conf + choice_temperature * (1 - (t + 1) / steps) * gumbel
            conf = conf.masked_fill(~masked, float("inf"))                            # never re-mask a known token
            tokens = draw
            if n_keep_masked == 0:
                masked = torch.zeros_like(masked)
                break
            rank = conf.argsort(dim=1).argsort(dim=1)                                 # 0 = least confident
            masked = rank < n_keep_masked                                             # the least confident stay masked
    finally:
        model.train(was_training)
    return tokens


# ---------------------------------------------------------------- registry

_TINY = dict(vocab_size=16, seq_len=16, num_classes=3, dim=32, depth=2, heads=2)


@register_model("maskgit_digits", kind="wrapper", tiny=_TINY)
def maskgit_digits(**overrides) -> TokenTransformer:
    """MaskGIT over the 8x8 codes (K = 512) of a digits tokenizer (f = 4), class-conditional (10)."""
    base = TokenTransformerConfig(vocab_size=512, seq_len=64, objective="masked", num_classes=10, dim=192, depth=6, heads=6)
    return TokenTransformer(replace_config(base, **overrides))


@register_model("tokengpt_digits", kind="wrapper", tiny=_TINY)
def tokengpt_digits(**overrides) -> TokenTransformer:
    """Next-token transformer over the 8x8 codes (K = 512) of a digits tokenizer, class-conditional (10)."""
    base = TokenTransformerConfig(vocab_size=512, seq_len=64, objective="causal", num_classes=10, dim=192, depth=6, heads=6)
    return TokenTransformer(replace_config(base, **overrides))
