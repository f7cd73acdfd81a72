"""MViTv2: improved multiscale vision transformers.

Li et al., "MViTv2: Improved Multiscale Vision Transformers for Classification
and Detection", CVPR 2022, arXiv:2112.01526 (after Fan et al., "Multiscale Vision
Transformers", arXiv:2104.11227). Notes: 004 (the hierarchical ViTs after Swin).

Like Swin, a hierarchy of stages whose resolution halves and width doubles,
but every token attends globally; the cost is cut by *pooling attention*:
Q, K and V are pooled by strided depthwise convolutions (each followed by a
LayerNorm) before the attention,

    Attn(X) = Softmax(P_Q(Q) P_K(K)^T / sqrt(d) + E_rel) P_V(V) + P_Q(Q)

with two MViTv2 changes: the decomposed relative position term
E_rel[i, j] = Q_i . (R^h[h(i) - h(j)] + R^w[w(i) - w(j)]) and the residual pooling
connection (+ P_Q(Q)). The first block of a stage pools Q with stride 2 (the
resolution step) and widens the channels inside its attention; its shortcut
is max-pooled and projected to match. K, V are pooled more in early stages
(adaptive stride 4, 2, 1, 1) where the token count is large.

Tensors are (B, N, C) tokens with their (H, W) grid, or (B, h, N, d) per head.
Module and parameter names follow timm (`attn.pool_q`, `attn.rel_pos_h`, ...),
so timm's checkpoints load without renaming (head.fc -> head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.core.base import TesseraModel, replace_config
from tessera.core.features import take_indices
from tessera.core.registry import register_model
from tessera.layers import DropPath, Mlp, check_image_batch, check_token_mask, checkpointed, drop_path_rates, to_2tuple

LN_EPS = 1e-6


@dataclass(frozen=True)
class MViTv2Config:
    """MViTv2 hyper-parameters; defaults are MViTv2-T at 224 px (the paper's table)."""

    img_size: int | tuple[int, int] = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96  # stage 1 width; doubles each stage
    depths: tuple[int, ...] = (1, 2, 5, 2)
    num_heads: int = 1  # stage 1 heads; doubles each stage
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool_kernel: int = 3  # depthwise pooling convs of Q, K, V
    kv_stride: int = 4  # stage-1 stride of K, V pooling, divided by 2 at each resolution step
    patch_kernel: int = 7  # overlapping patch embedding: 7 x 7 conv, stride 4, padding 3
    patch_stride: int = 4
    residual_pooling: bool = True
    rel_pos: bool = True  # decomposed relative position term in every attention
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    use_mask_token: bool = False  # a learned token for masked patches (masked-image modelling)

    def __post_init__(self) -> None:
        h, w = to_2tuple(self.img_size)
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be positive, got {self.depths}")
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be a positive multiple of num_heads {self.num_heads}")
        reduction = self.patch_stride * 2 ** (len(self.depths) - 1)
        if h < reduction or w < reduction:
            raise ValueError(f"img_size {(h, w)} is smaller than the total reduction {reduction}")
        for name in ("pool_kernel", "kv_stride", "patch_kernel", "patch_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


# ---------------------------------------------------------------- pure helpers


def pool_heads(x: Tensor, grid: tuple[int, int], pool: nn.Module, norm: nn.Module) -> tuple[Tensor, tuple[int, int]]:
    """P(X): a strided depthwise conv over each head's (H, W) map, then LayerNorm.

    Args:
        x: (B, h, H W, d) per-head tokens.
        grid: (H, W).
        pool: Conv2d(d, d, k, stride, groups=d), shared by the heads.
        norm: LayerNorm(d).

    Returns:
        (B, h, H' W', d) and the pooled grid (H', W').
    """
    B, h = x.shape[:2]
    maps = rearrange(x, "B h (H W) d -> (B h) d H W", H=grid[0], W=grid[1])
    maps = pool(maps)  # (B h, d, H', W')
    new_grid = (maps.shape[-2], maps.shape[-1])
    return norm(rearrange(maps, "(B h) d H W -> B h (H W) d", B=B, h=h)), new_grid


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """A (2 M - 1, d) relative position table linearly resized to (length, d)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None].float(), size=length, mode="linear")[0].T.to(table.dtype)


def rel_pos_along(table: Tensor, q_len: int, k_len: int) -> Tensor:
    """R[h(i) - h(j)] for every (query row i, key row j) along one axis: (q_len, k_len, d).

    Offsets are measured on the finer of the two grids (MViTv2's scaling when Q and
    K are pooled differently); a table learned for another length is resized linearly.
    """
    q_ratio, k_ratio = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
    dist = torch.arange(q_len)[:, None] * q_ratio - torch.arange(k_len)[None, :] * k_ratio
    dist = (dist + (k_len - 1) * k_ratio).long()
    table = resize_rel_pos(table, 2 * max(q_len, k_len) - 1)  # another input size than the table's
    return table[dist.to(table.device)]


def decomposed_rel_pos(q: Tensor, q_grid: tuple[int, int], k_grid: tuple[int, int], rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """E_rel[i, j] = Q_i . R^h[h(i) - h(j)] + Q_i . R^w[w(i) - w(j)]: (B, h, N_q, N_k)."""
    Rh = rel_pos_along(rel_h, q_grid[0], k_grid[0])  # (qH, kH, d)
    Rw = rel_pos_along(rel_w, q_grid[1], k_grid[1])  # (qW, kW, d)
    r_q = rearrange(q, "B h (H W) d -> B h H W d", H=q_grid[0], W=q_grid[1])
    eh = torch.einsum("bnhwd,hkd->bnhwk", r_q, Rh)  # (B, h, qH, qW, kH)
    ew = torch.einsum("bnhwd,wkd->bnhwk", r_q, Rw)  # (B, h, qH, qW, kW)
    bias = eh[..., :, None] + ew[..., None, :]  # (B, h, qH, qW, kH, kW)
    return rearrange(bias, "B n qH qW kH kW -> B n (qH qW) (kH kW)")


# ---------------------------------------------------------------- blocks


class PoolingAttention(nn.Module):
    """Multi-head pooling attention (MHPA) with decomposed relative positions and residual pooling.

    Args:
        dim: input channels.
        dim_out: output channels (wider than `dim` in a stage's first block).
        num_heads: heads h.
        grid: the (H, W) grid the relative tables are sized for.
        q_stride: pooling stride of Q (2 at a resolution step, else 1).
        kv_stride: pooling stride of K and V.
        kernel: pooling kernel (stride 1 with kernel 1 means no pooling).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        grid: tuple[int, int],
        q_stride: int,
        kv_stride: int,
        kernel: int = 3,
        qkv_bias: bool = True,
        rel_pos: bool = True,
        residual_pooling: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        d = dim_out // num_heads
        self.scale = d**-0.5
        self.residual_pooling = residual_pooling
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.pool_q, self.norm_q = self._pool(d, kernel, q_stride)
        self.pool_k, self.norm_k = self._pool(d, kernel, kv_stride)
        self.pool_v, self.norm_v = self._pool(d, kernel, kv_stride)
        if rel_pos:
            size = max(grid[0] // q_stride, grid[0] // kv_stride)
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, d))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, d))
        else:
            self.rel_pos_h = self.rel_pos_w = None

    @staticmethod
    def _pool(d: int, kernel: int, stride: int) -> tuple[nn.Module | None, nn.Module | None]:
        if kernel == 1 and stride == 1:  # the identity: no pooling, no norm
            return None, None
        conv = nn.Conv2d(d, d, kernel, stride=stride, padding=kernel // 2, groups=d, bias=False)
        return conv, nn.LayerNorm(d, eps=LN_EPS)

    def _pooled(self, x: Tensor, grid: tuple[int, int], pool: nn.Module | None, norm: nn.Module | None):
        return (x, grid) if pool is None else pool_heads(x, grid, pool, norm)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H W, C) on `grid` -> (B, H' W', C_out) on the grid of the pooled queries."""
        q, k, v = rearrange(self.qkv(x), "B N (three h d) -> three B h N d", three=3, h=self.num_heads)
        q, q_grid = self._pooled(q, grid, self.pool_q, self.norm_q)  # P_Q(Q)
        k, k_grid = self._pooled(k, grid, self.pool_k, self.norm_k)  # P_K(K)
        v, _ = self._pooled(v, grid, self.pool_v, self.norm_v)  # P_V(V)
        bias = None
        if self.rel_pos_h is not None:
            bias = decomposed_rel_pos(q, q_grid, k_grid, self.rel_pos_h, self.rel_pos_w)  # unscaled Q, as the paper
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)  # Softmax(QK^T/sqrt(d) + E_rel) V
        if self.residual_pooling:
            out = out + q  # + P_Q(Q)
        return self.proj(rearrange(out, "B h N d -> B N (h d)")), q_grid


class MultiScaleBlock(nn.Module):
    """x^ = pool(x or proj(LN(x))) + MHPA(LN(x));  x = x^ + MLP(LN(x^)), on (B, N, C) tokens."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        grid: tuple[int, int],
        q_stride: int,
        kv_stride: int,
        kernel: int,
        mlp_ratio: float,
        qkv_bias: bool,
        rel_pos: bool,
        residual_pooling: bool,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        # Where the width grows, the shortcut is projected from the normalised input (official code).
        self.shortcut_proj_attn = nn.Linear(dim, dim_out) if dim != dim_out else None
        # Where Q is pooled, the shortcut is max-pooled to the same grid.
        self.shortcut_pool_attn = (
            nn.MaxPool2d(q_stride + 1, q_stride, (q_stride + 1) // 2) if q_stride > 1 else None
        )
        self.attn = PoolingAttention(
            dim, dim_out, num_heads, grid, q_stride, kv_stride, kernel, qkv_bias, rel_pos, residual_pooling
        )
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=LN_EPS)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def shortcut(self, x: Tensor, x_norm: Tensor, grid: tuple[int, int]) -> Tensor:
        """The attention branch's residual: x, projected where C grows, max-pooled where Q is."""
        s = x if self.shortcut_proj_attn is None else self.shortcut_proj_attn(x_norm)
        if self.shortcut_pool_attn is not None:
            maps = rearrange(s, "B (H W) C -> B C H W", H=grid[0], W=grid[1])
            s = rearrange(self.shortcut_pool_attn(maps), "B C H W -> B (H W) C")
        return s

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H W, C) -> (B, H' W', C_out) and (H', W')."""
        x_norm = self.norm1(x)
        attn, new_grid = self.attn(x_norm, grid)
        x = self.shortcut(x, x_norm, grid) + self.drop_path1(attn)  # x^ = pool(x) + MHPA(LN(x))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))  # x = x^ + MLP(LN(x^))
        return x, new_grid


class MViTStage(nn.Module):
    """A stage: its first block pools Q (stride 2 after stage 1) and widens C; the rest keep both."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        num_heads: int,
        grid: tuple[int, int],
        q_stride: int,
        kv_stride: int,
        c: MViTv2Config,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(
                MultiScaleBlock(
                    dim if i == 0 else dim_out, dim_out, num_heads, grid, q_stride if i == 0 else 1, kv_stride,
                    c.pool_kernel, c.mlp_ratio, c.qkv_bias, c.rel_pos, c.residual_pooling, c.drop_rate, drop_path[i],
                )
            )
            if i == 0:
                grid = (grid[0] // q_stride, grid[1] // q_stride)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H W, C) -> (B, H' W', C_out) with its grid."""
        for block in self.blocks:
            x, grid = checkpointed(block, x, grid, enabled=self.grad_checkpointing)
        return x, grid


# ---------------------------------------------------------------- model


class MViTv2(TesseraModel):
    """MViTv2 classifier and hierarchical backbone (`MViTv2Config`); tokens are (B, N, C), no class token."""

    family = "mvitv2"
    num_prefix_tokens = 0

    def __init__(self, config: MViTv2Config) -> None:
        super().__init__(config)
        c = config
        n = len(c.depths)
        dims = [c.embed_dim * 2**i for i in range(n)]
        heads = [c.num_heads * 2**i for i in range(n)]
        img = to_2tuple(c.img_size)
        self.patch_size = c.patch_stride
        self.num_features = dims[-1]
        # Overlapping patch embedding: a 7 x 7 conv with stride 4 (padding 3).
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            c.in_chans, c.embed_dim, c.patch_kernel, stride=c.patch_stride, padding=c.patch_kernel // 2
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.use_mask_token else None
        grid = (img[0] // c.patch_stride, img[1] // c.patch_stride)
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))
        self.stages = nn.ModuleList()
        self.feature_info = []
        kv_stride, reduction = c.kv_stride, c.patch_stride
        for i in range(n):
            q_stride = 2 if i > 0 else 1
            if q_stride > 1:
                kv_stride = max(kv_stride // q_stride, 1)  # K, V keep pooling to about the same grid
            start = sum(c.depths[:i])
            self.stages.append(
                MViTStage(dims[max(i - 1, 0)], dims[i], c.depths[i], heads[i], grid, q_stride, kv_stride, c,
                          list(rates[start : start + c.depths[i]]))
            )
            grid = (grid[0] // q_stride, grid[1] // q_stride)
            reduction *= q_stride
            self.feature_info.append({"num_chs": dims[i], "reduction": reduction, "module": f"stages.{i}"})
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = nn.Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for block in self.modules():
            if isinstance(block, PoolingAttention) and block.rel_pos_h is not None:
                nn.init.trunc_normal_(block.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(block.rel_pos_w, std=0.02)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    # -- encoder

    def embed(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Images (B, C_in, H, W) -> patch tokens (B, H/4 W/4, C) and their grid; masked ones -> mask token."""
        check_image_batch(x, self.config.in_chans)
        maps = self.patch_embed.proj(x)  # (B, C, H/4, W/4)
        grid = (maps.shape[-2], maps.shape[-1])
        z = rearrange(maps, "B C H W -> B (H W) C")
        if mask is not None:
            check_token_mask(mask, z.shape[0], z.shape[1], self.mask_token is not None)
            z = torch.where(mask[..., None], self.mask_token.to(z.dtype), z)
        return z, grid

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C_in, H, W) -> final LayerNorm'd tokens (B, H/32 W/32, 8C); `mask` (B, N_patches) bool."""
        z, grid = self.embed(x, mask)
        for stage in self.stages:
            z, grid = stage(z, grid)
        return self.norm(z)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """Stage outputs as maps (B, C_i, H_i, W_i); `norm` applies the final norm to the last stage's."""
        take = take_indices(len(self.stages), indices, "stages")
        last = len(self.stages) - 1
        z, grid = self.embed(x)
        out: dict[int, Tensor] = {}
        for i, stage in enumerate(self.stages[: max(take) + 1]):
            z, grid = stage(z, grid)
            if i in take:
                t = self.norm(z) if norm and i == last else z
                out[i] = rearrange(t, "B (H W) C -> B C H W", H=grid[0], W=grid[1])
        maps = [out[i] for i in take]
        return (maps, [m.new_zeros(m.shape[0], 0, m.shape[1]) for m in maps]) if return_prefix_tokens else maps

    # -- classifier

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> normalised tokens (B, N, C)."""
        return self.forward_tokens(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Mean of the tokens (B, N, C) -> (B, C), then the linear head."""
        pooled = features.mean(dim=1)
        return pooled if pre_logits else self.head(self.head_drop(pooled))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """New head for `num_classes` classes (0: no head)."""
        self.config = replace_config(self.config, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Relative position tables and the mask token train without weight decay (official)."""
        return {n for n, _ in self.named_parameters() if "rel_pos" in n or n == "mask_token"}


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- registry

_TINY = dict(img_size=32, embed_dim=16, depths=(1, 2), num_heads=1, patch_stride=4, kv_stride=2)


def _register(name: str, depths: tuple[int, ...]) -> None:
    base = MViTv2Config(depths=depths)

    def build(**kw) -> MViTv2:
        return MViTv2(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = f"{name}: MViTv2 with depths {depths}, C = 96, 1 head doubling per stage, at 224 px."
    register_model(name, kind=("classifier", "encoder"), tiny=_TINY)(build)


_register("mvitv2_tiny", (1, 2, 5, 2))
_register("mvitv2_small", (1, 2, 11, 2))
_register("mvitv2_base", (2, 3, 16, 3))
