"""CoCa: Contrastive Captioners, around any registered encoder.

Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models",
arXiv:2205.01917; course notes 003 ("CoCa = Contrastive Captioners").

The image encoder runs once; a unimodal text decoder embeds the caption, a
multimodal decoder predicts it from the image:

    z   = encoder.forward_tokens(x)                     (B, N, C_enc)   encoder API only
    e_i = Pool_1(z) W_i / ||.||                         (B, E)          attentional pooler, 1 query
    q   = Pool_n(z)                                     (B, n, D)       attentional pooler, n queries
    u   = UniDec([Emb(w_<L) + P ; cls])                 (B, L, D)       causal, no cross-attention
    e_t = LN(u_cls) W_t / ||.||                         (B, E)          text embedding: the CLS at the end
    h   = MultiDec(u_text, q)                           (B, L-1, D)     causal + cross-attention to q
    p(w_t | w_<t, x) = softmax(LN(h) W_out)             (B, L-1, V)     W_out = Emb^T (tied, the default)

    L = lambda_con * InfoNCE(e_i, e_t; tau) + lambda_cap * CE(p, w_>0)     lambda_con = 1, lambda_cap = 2

Token rows are `[BOS] w_1 .. w_n [EOS] [PAD]..` (`tessera.data.text`): the decoders
read ids[:, :-1] and predict ids[:, 1:]; padding is ignored by the loss and hidden
from the CLS token. Generation (greedy, beam, top-k/top-p sampling, all with a
KV cache) is in `tessera.ssl.coca_generate`.

Departures from the paper, said here: pre-LN sequential blocks with a GELU MLP and
learned absolute positions (the paper follows its LM: parallel SwiGLU blocks,
rotary positions as in lucidrains' CoCa-pytorch); the contrastive and the
captioning pooler are two poolers, as in the paper (lucidrains shares one with
n + 1 queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.core.base import TesseraModel
from tessera.core.registry import register_model
from tessera.layers import CrossAttention, Mlp, attend, checkpointed
from tessera.ssl.encoder import build_encoder, freeze_args

# Special ids shared with tessera.data.text.TextTokenizer.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = 5
# CLIP's temperature: tau starts at 0.07 and 1/tau is clamped to 100 (the logit scale).
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0
# Additive mask value: large and finite, so a fully masked row can never give NaN.
NEG = -1e4


@dataclass(frozen=True)
class CoCaConfig:
    """CoCa around a registered encoder.

    Attributes:
        encoder: a registered encoder name (`tessera.list_models(kind="encoder")`).
        encoder_args: config overrides of the encoder (img_size, depth, ...).
        vocab_size: tokenizer vocabulary, special tokens included.
        context_length: length of a token row, [BOS] and [EOS] included.
        dim: width D of the text decoders and the poolers.
        unimodal_depth: blocks of the unimodal (text-only) decoder.
        multimodal_depth: blocks of the multimodal decoder (each with cross-attention).
        num_heads: attention heads in decoders and poolers.
        mlp_ratio: hidden width of the MLPs as a multiple of `dim`.
        num_caption_queries: n, the image tokens the captioner cross-attends to (paper: 256).
        embed_dim: E, the width of the joint (contrastive) embedding space.
        tie_embedding: output projection W_out = token embedding^T (else its own matrix).
        contrastive_loss_weight: lambda_con (paper: 1).
        caption_loss_weight: lambda_cap (paper: 2).
        label_smoothing: epsilon of the captioning cross-entropy.
    """

    encoder: str = "vit_base_patch16_224"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 8192
    context_length: int = 32
    dim: int = 512
    unimodal_depth: int = 6
    multimodal_depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_caption_queries: int = 256
    embed_dim: int = 512
    tie_embedding: bool = True
    contrastive_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_args", freeze_args(dict(self.encoder_args)))
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.vocab_size <= NUM_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {NUM_SPECIAL} special tokens, got {self.vocab_size}")
        if self.context_length < 3:
            raise ValueError(f"context_length must be >= 3 ([BOS], a token, [EOS]), got {self.context_length}")
        for name in ("unimodal_depth", "multimodal_depth", "num_caption_queries", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.contrastive_loss_weight < 0 or self.caption_loss_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class CoCaOutput:
    """What `CoCa.forward` returns: the loss, its terms and what they were made of."""

    loss: Tensor  # lambda_con * contrastive + lambda_cap * caption, scalar
    contrastive_loss: Tensor  # symmetric InfoNCE, scalar
    caption_loss: Tensor  # captioning cross-entropy (padding ignored), scalar
    logits: Tensor  # (B, L-1, V) next-token logits
    image_embed: Tensor  # (B, E) unit-norm
    text_embed: Tensor  # (B, E) unit-norm
    logit_scale: Tensor  # 1 / tau, clamped to MAX_LOGIT_SCALE


# --------------------------------------------------------------------------- losses


def gather_with_grad(x: Tensor) -> Tensor:
    """(B, E) -> (world * B, E), gathered from every rank with gradients; identity for one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def contrastive_loss(image_embed: Tensor, text_embed: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over the global batch (CLIP's loss, CoCa's L_Con).

    L = -1/2B sum_i [ log softmax_j(s x_i . y_j)_i + log softmax_j(s y_i . x_j)_i ],
    with unit-norm embeddings and s = 1/tau. Under DDP each rank scores its own
    rows against every rank's columns (gathered with gradients).

    Args:
        image_embed: (B, E) unit-norm image embeddings x_i.
        text_embed: (B, E) unit-norm text embeddings y_i, paired with the images.
        logit_scale: scalar s = 1 / tau.
    """
    all_images, all_texts = gather_with_grad(image_embed), gather_with_grad(text_embed)
    rank = dist.get_rank() if all_images.shape[0] != image_embed.shape[0] else 0
    labels = torch.arange(image_embed.shape[0], device=image_embed.device) + rank * image_embed.shape[0]
    logits_per_image = logit_scale * image_embed @ all_texts.T  # (B, world B)
    logits_per_text = logit_scale * text_embed @ all_images.T  # (B, world B)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def caption_loss(logits: Tensor, targets: Tensor, pad_id: int = PAD_ID, label_smoothing: float = 0.0) -> Tensor:
    """Captioning cross-entropy L_Cap = -sum_t log p(y_t | y_<t, x), averaged over non-padding targets.

    Args:
        logits: (B, T, V) next-token logits.
        targets: (B, T) the ids to predict; `pad_id` positions are ignored.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id, label_smoothing=label_smoothing
    )


# --------------------------------------------------------------------------- helpers


def causal_bias(n_new: int, n_total: int, device: torch.device | None = None) -> Tensor:
    """(n_new, n_total) additive mask: query i (at position n_total - n_new + i) sees keys <= its position."""
    q = torch.arange(n_total - n_new, n_total, device=device)[:, None]
    k = torch.arange(n_total, device=device)[None, :]
    return torch.zeros(n_new, n_total, device=device).masked_fill(k > q, NEG)


class LayerCache:
    """Keys and values of one attention layer for incremental decoding, preallocated (B, h, L_max, d)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0
        self.cross: tuple[Tensor, Tensor] | None = None  # cross-attention keys/values, computed once

    def append(self, k: Tensor, v: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        """Store the new (B, h, T, d) keys/values; return all of them so far."""
        if self.k is None:
            B, h, _, d = k.shape
            self.k = k.new_zeros(B, h, max_length, d)
            self.v = v.new_zeros(B, h, max_length, d)
        T = k.shape[2]
        if self.length + T > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; cannot add {T} to {self.length}")
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]
        if self.cross is not None:
            self.cross = (self.cross[0][index], self.cross[1][index])


class KVCache:
    """One `LayerCache` per attention layer of both decoders; `length` positions filled so far."""

    def __init__(self, num_layers: int, max_length: int) -> None:
        self.layers = [LayerCache() for _ in range(num_layers)]
        self.max_length = max_length

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


# --------------------------------------------------------------------------- blocks


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask and an optional KV cache; x: (B, N, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None, cache: LayerCache | None = None, max_length: int = 0) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "B N (three h d) -> three B h N d", three=3, h=self.num_heads)
        if cache is not None:  # attend to every earlier position as well
            k, v = cache.append(k, v, max_length)
        x = attend(q, k, v, bias)
        return self.proj(rearrange(x, "B h N d -> B N (h d)"))


class CachedCrossAttention(CrossAttention):
    """`tessera.layers.CrossAttention` whose keys/values of the (fixed) image tokens are computed once per caption."""

    def forward(self, x: Tensor, context: Tensor, cache: LayerCache | None = None) -> Tensor:  # type: ignore[override]
        if cache is None:
            return super().forward(x, context)
        if cache.cross is None:
            kv = rearrange(self.kv(context), "B M (two h d) -> two B h M d", two=2, h=self.num_heads)
            cache.cross = (kv[0], kv[1])
        q = rearrange(self.q(x), "B N (h d) -> B h N d", h=self.num_heads)
        x = attend(q, *cache.cross)
        return self.proj(rearrange(x, "B h N d -> B N (h d)"))


class DecoderBlock(nn.Module):
    """Pre-LN causal transformer block, with cross-attention to image tokens when `context_dim` is given."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads)
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = CachedCrossAttention(dim, context_dim, num_heads, qkv_bias=True)
        else:
            self.norm_cross, self.cross = None, None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        h: Tensor,
        bias: Tensor | None,
        context: Tensor | None = None,
        cache: LayerCache | None = None,
        max_length: int = 0,
    ) -> Tensor:
        """h: (B, N, D), bias broadcastable to (B, heads, N, N_keys), context: (B, n, D_ctx) -> (B, N, D)."""
        h = h + self.attn(self.norm1(h), bias, cache, max_length)  # h = CausalMSA(LN(h)) + h
        if self.cross is not None:
            h = h + self.cross(self.norm_cross(h), context, cache)  # h = CrossMSA(LN(h), q) + h
        return h + self.mlp(self.norm2(h))  # h = MLP(LN(h)) + h


class AttentionalPooler(nn.Module):
    """n learned queries cross-attending the image tokens: (B, N, C_enc) -> (B, n, D) (CoCa, section 3.2)."""

    def __init__(self, dim: int, context_dim: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm_context = nn.LayerNorm(context_dim)
        self.attn = CrossAttention(dim, context_dim, num_heads, qkv_bias=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        q = self.queries.expand(tokens.shape[0], -1, -1)  # (B, n, D)
        return self.norm(self.attn(q, self.norm_context(tokens)))


# --------------------------------------------------------------------------- model


class CoCa(TesseraModel):
    """Contrastive captioner around any registered encoder (`CoCaConfig`).

    forward(images (B, C, H, W), ids (B, L)) -> CoCaOutput; `embed_image`,
    `embed_text` give the joint embeddings (retrieval, zero-shot), `encode_image` +
    `caption_logits` / `decode_step` drive generation (`tessera.ssl.coca_generate`).
    """

    family = "coca"
    head_keys = ()

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__(config)
        c = config
        D = c.dim
        self.encoder = build_encoder(c.encoder, c.encoder_args, use_mask_token=False)
        C_enc = self.encoder.feature_info[-1]["num_chs"]  # width of forward_tokens

        # Image side: two attentional poolers (contrastive: 1 query; captioner: n queries).
        self.contrastive_pool = AttentionalPooler(D, C_enc, 1, c.num_heads)
        self.caption_pool = AttentionalPooler(D, C_enc, c.num_caption_queries, c.num_heads)
        self.image_proj = nn.Linear(D, c.embed_dim, bias=False)

        # Text side: token + position embeddings; the CLS takes the last position.
        self.token_embed = nn.Embedding(c.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.randn(c.context_length, D) * 0.01)
        self.cls_token = nn.Parameter(torch.randn(D) * 0.02)
        self.unimodal = nn.ModuleList(DecoderBlock(D, c.num_heads, c.mlp_ratio) for _ in range(c.unimodal_depth))
        self.cls_norm = nn.LayerNorm(D)
        self.text_proj = nn.Linear(D, c.embed_dim, bias=False)
        self.multimodal = nn.ModuleList(
            DecoderBlock(D, c.num_heads, c.mlp_ratio, context_dim=D) for _ in range(c.multimodal_depth)
        )
        self.out_norm = nn.LayerNorm(D)
        self.to_logits = None if c.tie_embedding else nn.Linear(D, c.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))
        self.grad_checkpointing = False
        for child in self.children():
            if child is not self.encoder:  # the encoder keeps its own initialisation
                child.apply(_init_linear)
        # std D^-1/2, not GPT-2's 0.02: with the tied output and a small D, 0.02 gives logits of
        # std 0.02 sqrt(D) ~ 0.1 and the captioner learns ~3x slower (digits: CE 1.9 vs 0.8 after 76 steps).
        nn.init.normal_(self.token_embed.weight, std=D**-0.5)

    # ------------------------------------------------------------ shapes and checks
    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the encoder."""
        return tuple(self.encoder.input_size)

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) and token rows (B, L) `[BOS] random tokens [EOS] [PAD]...` of varied lengths."""
        c = self.config
        L = c.context_length
        ids = torch.full((batch_size, L), PAD_ID, dtype=torch.long)
        for b in range(batch_size):
            n = 1 + (b % (L - 2))  # 1 .. L-2 caption tokens
            ids[b, 0] = BOS_ID
            ids[b, 1 : n + 1] = torch.randint(NUM_SPECIAL, c.vocab_size, (n,))
            ids[b, n + 1] = EOS_ID
        return torch.randn(batch_size, *self.input_size), ids

    def check_ids(self, ids: Tensor) -> Tensor:
        """Validate token rows (B, L <= context_length) and pad them to the context length."""
        c = self.config
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            what = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"token ids must be an integer tensor (B, L), got {what}")
        if ids.shape[1] > c.context_length:
            raise ValueError(
                f"token rows have length {ids.shape[1]}, more than the context length {c.context_length}; "
                "encode captions with TextTokenizer.encode(texts, context_length) (which truncates with a warning)"
            )
        if ids.shape[1] < 2:
            raise ValueError(f"token rows need [BOS] and at least one more id, got length {ids.shape[1]}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must be in [0, {c.vocab_size}), found {int(ids.min())}..{int(ids.max())}")
        empty = (ids[:, 1] == EOS_ID) | (ids[:, 1] == PAD_ID)
        if empty.any():
            raise ValueError(f"caption(s) {empty.nonzero().flatten().tolist()} are empty ([BOS] followed by [EOS]/[PAD])")
        return F.pad(ids.long(), (0, c.context_length - ids.shape[1]), value=PAD_ID)

    # ------------------------------------------------------------ image side
    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (unit-norm contrastive embedding (B, E), captioner image tokens (B, n, D))."""
        tokens = self.encoder.forward_tokens(images)  # (B, N, C_enc); the encoder checks the images
        pooled = self.contrastive_pool(tokens)[:, 0]  # (B, D)
        return F.normalize(self.image_proj(pooled), dim=-1), self.caption_pool(tokens)

    def embed_image(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings (B, E) for retrieval and zero-shot classification."""
        return self.encode_image(images)[0]

    # ------------------------------------------------------------ text side
    def _run(self, blocks: nn.ModuleList, h: Tensor, bias: Tensor, context: Tensor | None = None) -> Tensor:
        for blk in blocks:
            h = checkpointed(blk, h, bias, context, enabled=self.grad_checkpointing)
        return h

    def unimodal_forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Padded rows (B, L) -> (unit-norm text embedding (B, E), unimodal outputs (B, L-1, D) of ids[:, :-1])."""
        inp = ids[:, :-1]  # (B, L-1): the decoder reads every id but the last
        B, T = inp.shape
        h = torch.cat([self.token_embed(inp), self.cls_token.expand(B, 1, -1)], dim=1) + self.pos_embed  # (B, L, D)
        # Causal mask; the CLS (last row) also must not see padding.
        bias = causal_bias(T + 1, T + 1, ids.device).expand(B, 1, T + 1, T + 1).clone()  # (B, 1, L, L)
        bias[:, 0, -1, :T] = bias[:, 0, -1, :T].masked_fill(inp == PAD_ID, NEG)
        h = self._run(self.unimodal, h, bias.to(h.dtype))
        text_embed = F.normalize(self.text_proj(self.cls_norm(h[:, -1])), dim=-1)
        return text_embed, h[:, :-1]

    def embed_text(self, ids: Tensor) -> Tensor:
        """Unit-norm text embeddings (B, E) of token rows (B, L <= context_length) (the CLS output)."""
        return self.unimodal_forward(self.check_ids(ids))[0]

    def _logits(self, h: Tensor) -> Tensor:
        h = self.out_norm(h)
        return h @ self.token_embed.weight.T if self.to_logits is None else self.to_logits(h)

    def caption_logits(self, ids: Tensor, image_tokens: Tensor) -> Tensor:
        """Next-token logits (B, T, V) for a prefix `ids` (B, T) (no CLS, no cache): the reference path."""
        T = ids.shape[1]
        if T > self.config.context_length - 1:
            raise ValueError(f"a prefix has at most {self.config.context_length - 1} ids, got {T}")
        h = self.token_embed(ids) + self.pos_embed[:T]
        bias = causal_bias(T, T, ids.device).to(h.dtype)
        h = self._run(self.unimodal, h, bias)
        h = self._run(self.multimodal, h, bias, image_tokens)
        return self._logits(h)

    def new_cache(self) -> KVCache:
        """An empty KV cache for `decode_step` (both decoders' layers)."""
        c = self.config
        return KVCache(c.unimodal_depth + c.multimodal_depth, c.context_length - 1)

    def decode_step(self, ids: Tensor, image_tokens: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, T, V) of the next tokens after `ids` (B, T), the ids that follow the cached ones.

        The same numbers as `caption_logits` on the whole prefix, computing only the new positions.
        """
        start, T = cache.length, ids.shape[1]
        if start + T > cache.max_length:
            raise ValueError(f"a caption has at most {cache.max_length} input positions; got {start + T}")
        h = self.token_embed(ids) + self.pos_embed[start : start + T]
        bias = None if T == 1 else causal_bias(T, start + T, ids.device).to(h.dtype)
        layers = iter(cache.layers)
        for blk in self.unimodal:
            h = blk(h, bias, None, next(layers), cache.max_length)
        for blk in self.multimodal:
            h = blk(h, bias, image_tokens, next(layers), cache.max_length)
        return self._logits(h)

    # ------------------------------------------------------------ training forward
    def forward(self, images: Tensor, ids: Tensor) -> CoCaOutput:
        """Images (B, C, H, W) and caption rows (B, L) -> losses and embeddings (`CoCaOutput`)."""
        c = self.config
        ids = self.check_ids(ids)
        if images.shape[0] != ids.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {ids.shape[0]} captions")
        image_embed, image_tokens = self.encode_image(images)
        text_embed, h = self.unimodal_forward(ids)
        bias = causal_bias(h.shape[1], h.shape[1], ids.device).to(h.dtype)
        logits = self._logits(self._run(self.multimodal, h, bias, image_tokens))  # (B, L-1, V)
        scale = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        l_con = contrastive_loss(image_embed, text_embed, scale)
        l_cap = caption_loss(logits, ids[:, 1:], PAD_ID, c.label_smoothing)
        loss = c.contrastive_loss_weight * l_con + c.caption_loss_weight * l_cap
        return CoCaOutput(loss, l_con, l_cap, logits, image_embed, text_embed, scale.detach())

    # ------------------------------------------------------------ training helpers
    def no_weight_decay(self) -> set[str]:
        """Position table, CLS, pooler queries and the temperature, plus the encoder's exemptions."""
        own = {"pos_embed", "cls_token", "logit_scale", "contrastive_pool.queries", "caption_pool.queries"}
        return own | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the decoder blocks and the encoder's blocks in backward."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- registry


def _register(name: str, encoder: str, tiny_encoder: dict, doc: str, **fixed: Any) -> None:
    base = CoCaConfig(encoder=encoder, **fixed)

    def build(**kw: Any) -> CoCa:
        from tessera.core.base import replace_config

        return CoCa(replace_config(base, **kw))

    build.__doc__ = doc
    tiny = {
        "encoder_args": {**dict(base.encoder_args), **tiny_encoder},
        "vocab_size": 64, "context_length": 8, "dim": 32, "unimodal_depth": 1, "multimodal_depth": 1,
        "num_heads": 2, "num_caption_queries": 4, "embed_dim": 16,
    }
    register_model(name, kind="wrapper", tiny=tiny)(build)


_VIT_TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
_register(
    "coca_vit_tiny", "vit_tiny_patch16_224", _VIT_TINY,
    "CoCa on a ViT-Ti/16 encoder, a small text side (D 256, 2 + 2 blocks, 64 caption queries).",
    dim=256, unimodal_depth=2, multimodal_depth=2, num_heads=4, num_caption_queries=64, embed_dim=256,
)
_register(
    "coca_vit_base", "vit_base_patch16_224", _VIT_TINY,
    "CoCa on a ViT-B/16 encoder, the paper's 'CoCa-Base' text side (D 768, 12 + 12 blocks, 256 queries).",
    dim=768, unimodal_depth=12, multimodal_depth=12, num_heads=12, num_caption_queries=256, embed_dim=768,
    vocab_size=64000, context_length=64,
)
_register(
    "coca_swin_tiny", "swin_tiny_patch4_window7_224",
    {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
    "CoCa on a Swin-T encoder, a small text side (D 256, 2 + 2 blocks, 64 caption queries).",
    dim=256, unimodal_depth=2, multimodal_depth=2, num_heads=4, num_caption_queries=64, embed_dim=256,
)
