"""Vision Transformer and DeiT.

ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929.
DeiT: Touvron et al., "Training data-efficient image transformers & distillation
through attention", arXiv:2012.12877.
Notes: seed 002 ("ViT"), seed 003 ("Visual tokenization", "Positional encoding in
ViTs", "Higher Resolution Processing", "DEIT").

The image (H, W, C) is cut into N = HW / P^2 patches, each linearly projected to
C channels; a CLS token (and for DeiT a distillation token) is prepended, position
embeddings are added, and a pre-LN transformer encoder follows:

    z^ = MSA(LN(z)) + z;   z = MLP(LN(z^)) + z^;   y = LN(z_L)

The head reads the CLS token (or the mean of the patch tokens). DeiT's distilled
models have two heads, one on the CLS token and one on the distillation token;
at inference their logits are averaged (timm / Hugging Face), which ranks the
classes exactly like the notes' sum before the softmax.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tessera.layers import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    RelativePositionBias,
    check_image_batch,
    check_token_mask,
    checkpointed,
    drop_path_rates,
    relative_position_index,
    resample_abs_pos_embed,
    resize_rel_pos_table,
    same_grid,
    sincos_2d,
    to_2tuple,
)
from tessera.core.base import TesseraModel, replace_config
from tessera.core.features import take_indices
from tessera.core.registry import register_model

LN_EPS = 1e-6  # timm's and the original JAX code's LayerNorm epsilon


@dataclass(frozen=True)
class ViTConfig:
    """ViT / DeiT hyper-parameters; defaults are ViT-B/16 at 224 px (the paper's)."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    distilled: bool = False  # DeiT: a distillation token and a second head
    global_pool: Literal["token", "avg"] = "token"
    # Additive absolute position embedding: learned, fixed 2-D sine-cosine, or none.
    pos_embed: Literal["learn", "sincos", "none"] = "learn"
    # A learned bias per query-key offset on the patch grid, added to the attention
    # scores of every block (the notes' relative / bias encodings).
    rel_pos_bias: bool = False
    # Width of the pre-training head's hidden layer (Linear -> tanh); None = the
    # fine-tuning head, a single linear layer.
    pre_logits_dim: int | None = None
    hybrid_stem: bool = False  # the notes' CNN-backbone patch embedding
    dynamic_img_size: bool = False  # accept any patch multiple, resampling positions on the fly
    # How a learned position grid is resampled to another grid: timm's bicubic, or the
    # bilinear of transformers' DPT (needed for its outputs at other sizes).
    pos_embed_interp: Literal["bicubic", "bilinear"] = "bicubic"
    # Resample with an antialiasing filter (PyTorch's antialiased bicubic uses a = -0.5, not
    # -0.75): what DINOv2 with registers does (transformers' Dinov2WithRegistersModel).
    pos_embed_antialias: bool = False
    # A learned token that replaces masked patch embeddings (SimMIM, iBOT); off by
    # default so that timm / transformers checkpoints, which have none, load strictly.
    use_mask_token: bool = False
    # DINOv2's backbone details (Oquab et al., arXiv:2304.07193): a learned per-channel scale
    # gamma on each residual branch (CaiT's LayerScale), initialised to this value (None: off) ...
    layer_scale_init: float | None = None
    # ... and register tokens (Darcet et al., arXiv:2309.16588): extra learned prefix tokens
    # after the class token, without position embedding, that no head reads.
    num_register_tokens: int = 0
    # LayerNorm epsilon: timm's and the JAX code's 1e-6; transformers' ViT / DeiT configs say 1e-12,
    # and loading their checkpoints takes the checkpoint's value (tessera.io.checkpoint) unless set here.
    norm_eps: float = LN_EPS
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        h, w = to_2tuple(self.img_size)
        p = self.patch_size
        if p < 1 or h % p or w % p:
            raise ValueError(f"img_size {(h, w)} must be a multiple of patch_size {p}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.pos_embed_interp not in ("bicubic", "bilinear"):
            raise ValueError(f"pos_embed_interp must be 'bicubic' or 'bilinear', got {self.pos_embed_interp!r}")
        if self.pos_embed not in ("learn", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none', got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"pos_embed='sincos' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True (or use global_pool='avg')")
        if self.distilled and (not self.class_token or self.global_pool != "token"):
            raise ValueError("distilled=True needs class_token=True and global_pool='token'")
        if self.hybrid_stem and p % 4:
            raise ValueError(f"hybrid_stem reduces by 4 before the patch projection; patch_size {p} is not a multiple of 4")
        if self.pre_logits_dim is not None and self.pre_logits_dim < 1:
            raise ValueError(f"pre_logits_dim must be a positive int or None, got {self.pre_logits_dim}")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ValueError(f"layer_scale_init must be > 0 or None, got {self.layer_scale_init}")
        if not isinstance(self.num_register_tokens, int) or self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be an int >= 0, got {self.num_register_tokens!r}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


# --------------------------------------------------------------------------- helpers


def patch_grid_bias(rpb: RelativePositionBias, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Relative position bias over a patch grid, zero rows/columns for the prefix tokens.

    Args:
        rpb: the block's learned table over offsets of its configured grid.
        grid: (H', W') of the current input; when it differs from `rpb.window`
            the table is bicubic-resized and the offsets recomputed.
        num_prefix_tokens: CLS (+ distillation) tokens in front of the patches.

    Returns:
        B of shape (heads, prefix + H'W', prefix + H'W'), added to Q K^T / sqrt(d).
    """
    if tuple(grid) == tuple(rpb.window):
        bias = rpb()  # (h, N, N)
    else:
        table = resize_rel_pos_table(rpb.table, grid, rpb.window)
        index = relative_position_index(grid).to(table.device)
        N = grid[0] * grid[1]
        bias = table[index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
    # Prefix tokens have no position on the grid: they get no bias (pad with zeros).
    return nn.functional.pad(bias, (num_prefix_tokens, 0, num_prefix_tokens, 0))


# --------------------------------------------------------------------------- blocks


class ConvStem(nn.Module):
    """The notes' "fixed CNN-backbone" patch embedding, kept small.

    Two 3x3 stride-2 conv-BN-ReLU layers (the early-convolution stem of Xiao et
    al., arXiv:2106.14881) reduce H, W by 4; the patch projection with P/4
    then gives the same token grid as a P x P patchify.
    """

    reduction = 4

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        mid = max(out_chans // 2, 1)
        self.conv1 = nn.Conv2d(in_chans, mid, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_chans, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, out_chans, H/4, W/4)."""
        x = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(x)))


class LayerScale(nn.Module):
    """x -> gamma * x with a learned per-channel gamma (CaiT, DINOv2), initialised to `init`."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN transformer encoder block over tokens (B, N, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        rel_pos_grid: tuple[int, int] | None = None,
        num_prefix_tokens: int = 1,
        layer_scale_init: float | None = None,
        norm_eps: float = LN_EPS,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.rel_pos_bias = RelativePositionBias(rel_pos_grid, num_heads) if rel_pos_grid else None
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, z: Tensor, grid: tuple[int, int]) -> Tensor:
        """z: (B, N, C) with N = prefix + H'W' tokens of a (H', W') patch grid -> (B, N, C)."""
        bias = None
        if self.rel_pos_bias is not None:
            bias = patch_grid_bias(self.rel_pos_bias, grid, self.num_prefix_tokens)
        z = z + self.drop_path1(self.ls1(self.attn(self.norm1(z), bias)))  # z^ = (gamma_1) MSA(LN(z)) + z
        z = z + self.drop_path2(self.ls2(self.mlp(self.norm2(z))))  # z = (gamma_2) MLP(LN(z^)) + z^
        return z


# --------------------------------------------------------------------------- model


class VisionTransformer(TesseraModel):
    """ViT / DeiT classifier (`ViTConfig`); tokens are (B, N, C), CLS (and dist) first.

    Encoder API for wrappers (SimMIM, DINO, DPT, distillation):
    `forward_tokens(x, mask=None) -> (B, N, C)`, `forward_intermediates(x, indices)`,
    `forward_distill(x) -> (cls_logits, dist_logits)`; `num_prefix_tokens` and
    `patch_grid` describe the token layout.
    """

    family = "vit"
    head_keys = ("head.", "head_dist.")

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        c = config
        C = c.embed_dim
        img = to_2tuple(c.img_size)
        self.patch_size = c.patch_size
        self.patch_grid = (img[0] // c.patch_size, img[1] // c.patch_size)
        # Prefix tokens: [CLS, dist, registers]; only CLS and dist have a position embedding.
        self.num_pos_prefix_tokens = int(c.class_token) + int(c.distilled)
        self.num_prefix_tokens = self.num_pos_prefix_tokens + c.num_register_tokens
        self.num_features = c.pre_logits_dim or C

        # Patch partition + linear projection (optionally after a small CNN stem).
        if c.hybrid_stem:
            self.stem = ConvStem(c.in_chans, C // 2)
            self.patch_embed = PatchEmbed(c.patch_size // ConvStem.reduction, C // 2, C)
        else:
            self.stem = None
            self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, C)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, C)) if c.distilled else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, C)) if c.use_mask_token else None
        R = c.num_register_tokens
        self.reg_token = nn.Parameter(torch.zeros(1, R, C)) if R else None
        N = self.patch_grid[0] * self.patch_grid[1]
        if c.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_pos_prefix_tokens + N, C))
        elif c.pos_embed == "sincos":
            # Fixed, so derived: a non-persistent buffer. Prefix tokens get no position.
            self.register_buffer("pos_embed", self._sincos(self.patch_grid), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(c.drop_rate)

        rel_grid = self.patch_grid if c.rel_pos_bias else None
        self.blocks = nn.ModuleList(
            Block(
                C, c.num_heads, c.mlp_ratio, c.qkv_bias, c.drop_rate, p, rel_grid, self.num_prefix_tokens,
                c.layer_scale_init, c.norm_eps,
            )
            for p in drop_path_rates(c.drop_path_rate, c.depth)
        )
        self.norm = nn.LayerNorm(C, eps=c.norm_eps)

        # Pre-training head: Linear -> tanh -> Linear; fine-tuning head: Linear.
        if c.pre_logits_dim:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(C, c.pre_logits_dim), act=nn.Tanh()))
        else:
            self.pre_logits = nn.Identity()
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = self._make_head(c.num_classes)
        self.head_dist = self._make_head(c.num_classes) if c.distilled else None
        self.apply(_init_weights)
        self.feature_info = [
            {"num_chs": C, "reduction": c.patch_size, "module": f"blocks.{i}"} for i in range(c.depth)
        ]
        for p in (self.cls_token, self.dist_token, self.mask_token, self.reg_token, self.pos_embed):
            if isinstance(p, nn.Parameter):
                nn.init.trunc_normal_(p, std=0.02)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _sincos(self, grid: tuple[int, int]) -> Tensor:
        pe = sincos_2d(grid, self.config.embed_dim)  # (H'W', C)
        return torch.cat([pe.new_zeros(self.num_pos_prefix_tokens, pe.shape[1]), pe])[None]

    # ----------------------------------------------------------------- embedding

    def _check_size(self, x: Tensor) -> tuple[int, int]:
        """The patch grid of `x`, or a ValueError saying what size is accepted and how to allow others."""
        check_image_batch(x, self.config.in_chans, (self.patch_size, self.patch_size))
        H, W = x.shape[-2:]
        P = self.patch_size
        expected = (self.patch_grid[0] * P, self.patch_grid[1] * P)
        if self.config.dynamic_img_size:
            if H % P or W % P:
                raise ValueError(
                    f"input of {H}x{W} is not a multiple of the patch size {P}; crop or resize it "
                    f"to a multiple of {P} (e.g. {H // P * P}x{W // P * P})"
                )
        elif (H, W) != expected:
            raise ValueError(
                f"this model takes {expected[0]}x{expected[1]} images, got {H}x{W}; resize the input, "
                f"or build the model with dynamic_img_size=True to accept any multiple of the patch "
                f"size {P} (position embeddings are then interpolated), or with img_size=({H}, {W})"
            )
        return (H // P, W // P)

    def _position_embedding(self, grid: tuple[int, int]) -> Tensor | None:
        """(1, prefix + H'W', C) position embedding for a (H', W') grid, resampled when it differs."""
        if self.pos_embed is None:
            return None
        if same_grid(grid, self.patch_grid):
            return self.pos_embed
        if self.config.pos_embed == "sincos":
            return self._sincos(grid).to(self.pos_embed)
        return resample_abs_pos_embed(
            self.pos_embed, grid, self.patch_grid, self.num_pos_prefix_tokens, mode=self.config.pos_embed_interp,
            antialias=self.config.pos_embed_antialias,
        )

    def _embed(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Images (B, C_in, H, W) -> tokens z_0 (B, prefix + H'W', C) and the grid (H', W').

        Where `mask` (B, H'W') is True the patch embedding is replaced by the mask token.
        """
        grid = self._check_size(x)
        if self.stem is not None:
            x = self.stem(x)  # (B, C/2, H/4, W/4)
        x = self.patch_embed(x).flatten(1, 2)  # (B, H', W', C) -> (B, H'W', C)
        B = x.shape[0]
        if mask is not None:
            check_token_mask(mask, B, x.shape[1], self.mask_token is not None)
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        z = torch.cat([*prefix, x], dim=1)  # (B, prefix + H'W', C): [CLS, dist, patches]
        pos = self._position_embedding(grid)
        if pos is not None:
            z = z + pos  # z_0 = [x_cls; x_dist; x_p E] + E_pos
        if self.reg_token is not None:  # registers after CLS / dist, without position (as DINOv2)
            P0 = self.num_pos_prefix_tokens
            z = torch.cat([z[:, :P0], self.reg_token.expand(B, -1, -1).to(z.dtype), z[:, P0:]], dim=1)
        return self.pos_drop(z), grid

    # ----------------------------------------------------------------- encoder API

    def _run_blocks(self, z: Tensor, grid: tuple[int, int]) -> Tensor:
        for blk in self.blocks:
            z = checkpointed(blk, z, grid, enabled=self.grad_checkpointing)
        return z

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encoder output after the final LN, prefix tokens first.

        Args:
            x: images (B, C_in, H, W).
            mask: (B, N_patches) bool; True replaces that patch's embedding by the
                learned mask token (needs `use_mask_token=True`).

        Returns:
            y = LN(z_L), shape (B, prefix + H'W', C).
        """
        z, grid = self._embed(x, mask)
        return self.norm(self._run_blocks(z, grid))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """Outputs of selected blocks as maps (B, C, H', W') on the patch grid.

        Args:
            x: images (B, C_in, H, W).
            indices: block indices (negative counts from the end), an int n for the
                last n blocks, or None for every block (`feature_info` lists them).
            norm: apply the final LN to each (then the last block's equals `forward_tokens`).
            return_prefix_tokens: also return each block's prefix tokens (B, prefix, C),
                CLS first (DPT's read-out).
        """
        idx = take_indices(len(self.blocks), indices, "blocks")
        z, grid = self._embed(x)
        out: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(idx) + 1]):
            z = checkpointed(blk, z, grid, enabled=self.grad_checkpointing)
            if i in idx:
                out[i] = self.norm(z) if norm else z
        tokens = [out[i] for i in idx]
        P = self.num_prefix_tokens
        # (B, prefix + H'W', C) -> (B, C, H', W')
        maps = [t[:, P:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid) for t in tokens]
        return (maps, [t[:, :P] for t in tokens]) if return_prefix_tokens else maps

    def no_weight_decay(self) -> set[str]:
        """Position table and tokens train without weight decay (timm / DeiT)."""
        names = ("pos_embed", "cls_token", "dist_token", "mask_token", "reg_token")
        return {n for n, _ in self.named_parameters() if n in names}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> normalised tokens (B, prefix + H'W', C)."""
        return self.forward_tokens(x)

    def _pool(self, y: Tensor) -> Tensor:
        """(B, N, C) -> (B, C): the CLS token, or the mean of the patch tokens."""
        if self.config.global_pool == "avg":
            return y[:, self.num_prefix_tokens :].mean(dim=1)
        return y[:, 0]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, N, C) -> logits (B, num_classes), or (B, num_features) if `pre_logits`.

        For distilled models this is the inference rule, the mean of the CLS and
        distillation heads; training uses `forward_distill_head` for both.
        """
        if self.head_dist is not None:
            cls_logits, dist_logits = self.forward_distill_head(features, pre_logits)
            return (cls_logits + dist_logits) / 2
        h = self.pre_logits(self._pool(features))
        return h if pre_logits else self.head(self.head_drop(h))

    def forward_distill_head(self, features: Tensor, pre_logits: bool = False) -> tuple[Tensor, Tensor]:
        """DeiT's two heads on tokens (B, N, C): (CLS-head logits, distillation-head logits), each (B, K)."""
        if self.head_dist is None:
            raise ValueError("this model has no distillation token; build it with distilled=True")
        h_cls = self.pre_logits(features[:, 0])
        h_dist = self.pre_logits(features[:, 1])
        if pre_logits:
            return h_cls, h_dist
        return self.head(self.head_drop(h_cls)), self.head_dist(self.head_drop(h_dist))

    def forward_distill(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (cls_logits, dist_logits), each (B, K): the two outputs DeiT's training losses take.

        See `tessera.losses.hard_distillation_loss` / `soft_distillation_loss`.
        """
        return self.forward_distill_head(self.forward_features(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) by fresh ones with `num_classes` outputs (0: identity)."""
        self.head = self._make_head(num_classes)
        if self.head_dist is not None:
            self.head_dist = self._make_head(num_classes)
        for m in (self.head, self.head_dist):
            if m is not None:
                m.apply(_init_weights)
        self.config = replace_config(self.config, num_classes=num_classes)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- registry

# Seconds-fast variant for the contract tests (32 px, dim 32, depth 2).
_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)

_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _register(name: str, size: str, patch: int, img: int, **fixed) -> None:
    base = ViTConfig(img_size=img, patch_size=patch, **_SIZES[size], **fixed)

    def build(**kw) -> VisionTransformer:
        return VisionTransformer(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = f"{name}: ViT-{size} with {patch}x{patch} patches at {img} px."
    register_model(name, kind=("classifier", "encoder"), tiny=_TINY)(build)


for _size in ("tiny", "small", "base", "large"):
    for _img in (224, 384):
        _register(f"vit_{_size}_patch16_{_img}", _size, 16, _img)
for _size in ("base", "large"):
    for _img in (224, 384):
        _register(f"vit_{_size}_patch32_{_img}", _size, 32, _img)
_register("vit_huge_patch14_224", "huge", 14, 224)

for _size in ("tiny", "small", "base"):
    _register(f"deit_{_size}_patch16_224", _size, 16, 224)
    _register(f"deit_{_size}_distilled_patch16_224", _size, 16, 224, distilled=True)
_register("deit_base_patch16_384", "base", 16, 384)
_register("deit_base_distilled_patch16_384", "base", 16, 384, distilled=True)
