"""Swin Transformer V2: scaling up capacity and resolution.

Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", CVPR 2022,
arXiv:2111.09883. Notes: 004 ("Hierarchical ViT: Swin Transformer", its successors).

The same hierarchy and (shifted) windows as Swin (`tessera.models.swin`), with
three changes that keep large models stable and let a checkpoint move to
another window size:

1. Residual post-norm: the LayerNorm moves to the end of each residual branch,
       z^ = LN(SW-MSA(z)) + z,   z = LN(MLP(z^)) + z^
2. Scaled cosine attention with a learned per-head temperature tau:
       Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,   1 / tau = exp(min(logit_scale, log 100))
3. Log-spaced continuous position bias: B comes from a small MLP G of the
   log-spaced offset, dx^ = sign(dx) log2(1 + 8 |dx| / (M_pre - 1)) / log2(8), and
   B = 16 sigmoid(G(dx^, dy^)), so any window size can be served.

Queries and values have a bias, keys none; patch merging normalises after its
reduction. Module and parameter names follow the official code and timm
(`attn.qkv`, `attn.q_bias`, `attn.v_bias`, `attn.logit_scale`, `attn.cpb_mlp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import register_model
from tessera.layers import DropPath, Mlp, PatchEmbed, checkpointed, drop_path_rates, relative_position_index, to_2tuple
from tessera.models.swin import SwinTransformer, shifted_window_attention, stage_window
from tessera.models.swin import _init_weights  # the same official initialisation as Swin-V1

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # 1 / tau <= 100


@dataclass(frozen=True)
class SwinV2Config:
    """Swin-V2 hyper-parameters; defaults are SwinV2-T with 8 x 8 windows at 256 px."""

    img_size: int | tuple[int, int] = 256
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | tuple[int, int] = 8
    # Window each stage was pre-trained with (0: the current one): the CPB input is
    # normalised by it, which is how a checkpoint moves to another window size.
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    use_mask_token: bool = False  # a learned token for masked patches (SimMIM)

    def __post_init__(self) -> None:
        n = len(self.depths)
        if n == 0 or len(self.num_heads) != n or len(self.pretrained_window_sizes) != n:
            raise ValueError(
                f"depths, num_heads and pretrained_window_sizes need one entry per stage, got "
                f"{self.depths}, {self.num_heads}, {self.pretrained_window_sizes}"
            )
        for i, h in enumerate(self.num_heads):
            dim = self.embed_dim * 2**i
            if h < 1 or dim % h:
                raise ValueError(f"stage {i}: dim {dim} is not divisible by num_heads {h}")
        if min(to_2tuple(self.window_size)) < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if any(p < 0 or p == 1 for p in self.pretrained_window_sizes):
            raise ValueError(
                f"pretrained_window_sizes must be 0 (none) or >= 2 (the CPB divides by M - 1), "
                f"got {self.pretrained_window_sizes}"
            )
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


# ---------------------------------------------------------------- pure helpers


def log_spaced_coords(window: tuple[int, int], pretrained: tuple[int, int]) -> Tensor:
    """CPB input for every offset of a window: ((2M_h-1)(2M_w-1), 2), log-spaced in [-1, 1]-ish.

    Offsets dx in [-(M-1), M-1] are divided by M_pre - 1 (the pre-training window,
    or the window itself), scaled to [-8, 8], then dx^ = sign(dx) log2(1 + |dx|) / log2(8).
    """
    dh = torch.arange(-(window[0] - 1), window[0], dtype=torch.float32)
    dw = torch.arange(-(window[1] - 1), window[1], dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)  # (2M_h-1, 2M_w-1, 2)
    norm = pretrained if pretrained[0] > 0 else window
    scale = torch.tensor([max(norm[0] - 1, 1), max(norm[1] - 1, 1)], dtype=torch.float32)
    coords = coords / scale * 8
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
    return coords.reshape(-1, 2)


# ---------------------------------------------------------------- blocks


class CosineWindowAttention(nn.Module):
    """(S)W-MSA with scaled cosine attention and a continuous (MLP) relative position bias.

    Args:
        dim: channels C.
        num_heads: heads h.
        window: the configured window (M_h, M_w).
        pretrained_window: the window of pre-training (0: none), normalising the CPB input.
        qkv_bias: learn biases of q and v (k has none, as in the paper).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        pretrained_window: tuple[int, int] = (0, 0),
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.pretrained_window = pretrained_window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self, window: tuple[int, int]) -> Tensor:
        """B = 16 sigmoid(G(dx^)) for every query-key pair of a window: (h, N, N)."""
        coords = log_spaced_coords(window, self.pretrained_window).to(self.logit_scale.device)
        table = self.cpb_mlp(coords.to(self.cpb_mlp[0].weight.dtype))  # ((2M_h-1)(2M_w-1), h)
        index = relative_position_index(window).to(table.device)  # (N, N) into the table
        N = index.shape[0]
        bias = table[index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)  # (h, N, N)
        return 16 * torch.sigmoid(bias)

    def forward(self, windows: Tensor, mask: Tensor | None, window: tuple[int, int]) -> Tensor:
        """Attention in each window: (B, nW, N, C), shift mask (nW, N, N) or None -> (B, nW, N, C)."""
        B, nW, N, C = windows.shape
        h = self.num_heads
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])  # no key bias
        qkv = F.linear(windows, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "B W N (three h d) -> three (B W) h N d", three=3, h=h)
        inv_tau = torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()  # (h, 1, 1)
        q = F.normalize(q, dim=-1) * inv_tau  # cos(q, k) / tau as q^ . k^ with q^ scaled
        k = F.normalize(k, dim=-1)
        scores_bias = self.position_bias(window).to(q.dtype)  # (h, N, N)
        if mask is not None:
            scores_bias = scores_bias + mask.to(q.dtype)[:, None]  # (nW, h, N, N)
            scores_bias = scores_bias.expand(B, nW, h, N, N).reshape(B * nW, h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_bias, scale=1.0)  # (B nW, h, N, d)
        out = rearrange(out, "(B W) h N d -> B W N (h d)", B=B)
        return self.proj_drop(self.proj(out))


class SwinV2Block(nn.Module):
    """Residual post-norm block: z^ = LN(SW-MSA(z)) + z; z = LN(MLP(z^)) + z^ on (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        shifted: bool,
        pretrained_window: tuple[int, int] = (0, 0),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window, self.shifted = window, shifted
        self.attn = CosineWindowAttention(dim, num_heads, window, pretrained_window, qkv_bias, drop)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, z: Tensor) -> Tensor:
        """z: (B, H, W, C) -> (B, H, W, C)."""
        z = z + self.drop_path(self.norm1(self.msa(z)))  # ẑ = LN((S)W-MSA(z)) + z
        z = z + self.drop_path(self.norm2(self.mlp(z)))  # z = LN(MLP(ẑ)) + ẑ
        return z

    def msa(self, x: Tensor) -> Tensor:
        """W-MSA or SW-MSA of a (B, H, W, C) map, with Swin's shift, padding and small-map rules."""
        window, shift = stage_window((x.shape[1], x.shape[2]), self.window, self.shifted)
        return shifted_window_attention(x, self.attn, window, shift)


class PatchMergingV2(nn.Module):
    """Concatenate each 2 x 2 group -> 4C, linear 4C -> 2C (no bias), then LayerNorm (V2's order)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes get a zero row / column."""
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = rearrange(x, "B (H dh) (W dw) C -> B H W (dw dh C)", dh=2, dw=2)  # Swin's (0,0),(1,0),(0,1),(1,1)
        return self.norm(self.reduction(x))


class SwinV2Stage(nn.Module):
    """Patch merging (stages 2-4), then `depth` post-norm blocks alternating W-MSA / SW-MSA."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: tuple[int, int],
        pretrained_window: tuple[int, int],
        downsample: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.patch_merge = PatchMergingV2(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinV2Block(dim, num_heads, window, i % 2 == 1, pretrained_window, mlp_ratio, qkv_bias, drop, drop_path[i])
            for i in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, z: Tensor) -> Tensor:
        """(B, H, W, C/2) -> (B, H/2, W/2, C) (stage 1 keeps (B, H, W, C))."""
        z = self.patch_merge(z)
        for block in self.blocks:
            z = checkpointed(block, z, enabled=self.grad_checkpointing)
        return z


# ---------------------------------------------------------------- model


class SwinTransformerV2(SwinTransformer):
    """Swin-V2 classifier and hierarchical backbone; the encoder and classifier API of Swin.

    Runs the plain stages (no fast path): the cosine attention and its MLP bias
    are recomputed per call, which is what lets the window change.
    """

    family = "swinv2"

    def __init__(self, config: SwinV2Config) -> None:
        TesseraModel.__init__(self, config)
        c = config
        dims = [c.embed_dim * 2**i for i in range(len(c.depths))]
        window = to_2tuple(c.window_size)
        self.num_features = dims[-1]
        self.patch_size = c.patch_size
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim, norm=True, pad=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.use_mask_token else None
        self.abs_pos_embed = None
        self.pos_drop = nn.Dropout(c.drop_rate)
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))
        starts = [sum(c.depths[:i]) for i in range(len(c.depths))]
        self.stages = nn.ModuleList(
            SwinV2Stage(
                dims[i],
                c.depths[i],
                c.num_heads[i],
                window,
                to_2tuple(c.pretrained_window_sizes[i]),
                downsample=i > 0,
                mlp_ratio=c.mlp_ratio,
                qkv_bias=c.qkv_bias,
                drop=c.drop_rate,
                drop_path=list(rates[starts[i] : starts[i] + c.depths[i]]),
            )
            for i in range(len(c.depths))
        )
        self.global_attn = None  # Swin-V1's sampled global attention option is not part of V2
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"num_chs": dims[i], "reduction": c.patch_size * 2**i, "module": f"stages.{i}"} for i in range(len(dims))
        ]
        self.fast_path = None
        self.apply(_init_weights)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def set_fast_path(self, enable: bool = True, chunk_tokens: int | None = None) -> None:
        """Swin-V2 has only the plain path; asking for the fast one is an error."""
        if enable:
            raise ValueError("Swin-V2 has no fast path (its CPB bias depends on the window at each call)")

    def set_inference_chunking(self, max_tokens: int | None = None) -> None:
        """Not available for Swin-V2 (no fast path); None is accepted."""
        self.set_fast_path(max_tokens is not None)

    def reset_classifier(self, num_classes: int) -> None:
        """New head for `num_classes` classes (0: no head)."""
        self.config = replace_config(self.config, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        """The CPB MLP, the temperatures and the mask token train without weight decay (official)."""
        return {n for n, _ in self.named_parameters() if "cpb_mlp" in n or "logit_scale" in n or n == "mask_token"}


# ---------------------------------------------------------------- registry

_TINY = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
             pretrained_window_sizes=(0, 0))


def _build(base: SwinV2Config, overrides: dict) -> SwinTransformerV2:
    return SwinTransformerV2(replace_config(base, **overrides))


_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}


def _register(size: str, window: int) -> None:
    name = f"swinv2_{size}_window{window}_256"
    base = SwinV2Config(img_size=256, window_size=window, **_SIZES[size])

    def build(**kw) -> SwinTransformerV2:
        return _build(base, kw)

    build.__name__ = name
    build.__doc__ = f"SwinV2-{size[0].upper()} with {window} x {window} windows at 256 px."
    register_model(name, kind=("classifier", "encoder"), tiny=_TINY)(build)


for _size in ("tiny", "small", "base"):
    for _window in (8, 16):
        _register(_size, _window)
