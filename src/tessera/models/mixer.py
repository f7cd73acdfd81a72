"""MLP-Mixer.

Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", arXiv:2105.01601.
Notes: seed 004 ("MLP-Mixer: An All-MLP Architecture").

The image is cut into S patches of C channels (a table X of S x C). Each block
mixes along both axes with plain MLPs, each pre-LN with a residual:

    U = X + MLP_tokens(LN(X)^T)^T     token mixing:   S -> D_S -> S, per channel
    Y = U + MLP_channels(LN(U))       channel mixing: C -> D_C -> C, per patch

and the head is global average pooling over the patches, then a linear layer.
Module names follow timm's (stem.proj, blocks.i.mlp_tokens.fc1, ...), so timm's
checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from tessera.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    check_image_batch,
    check_token_mask,
    checkpointed,
    drop_path_rates,
    to_2tuple,
)
from tessera.core.base import TesseraModel, replace_config
from tessera.core.features import take_indices
from tessera.core.registry import register_model

LN_EPS = 1e-6


@dataclass(frozen=True)
class MixerConfig:
    """MLP-Mixer hyper-parameters; defaults are Mixer-B/16 at 224 px (the paper's table)."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768  # hidden size C
    depth: int = 12
    tokens_mlp_dim: int = 384  # D_S
    channels_mlp_dim: int = 3072  # D_C
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # A learned token replacing masked patch embeddings (masked-image modelling); off
    # by default so that timm checkpoints, which have none, load strictly.
    use_mask_token: bool = False

    def __post_init__(self) -> None:
        h, w = to_2tuple(self.img_size)
        if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"img_size {(h, w)} must be a multiple of patch_size {self.patch_size}")
        for name in ("embed_dim", "depth", "tokens_mlp_dim", "channels_mlp_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


class MixerBlock(nn.Module):
    """One Mixer layer over a patch table (B, S, C)."""

    def __init__(
        self, dim: int, seq_len: int, tokens_mlp_dim: int, channels_mlp_dim: int, drop: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = Mlp(seq_len, tokens_mlp_dim, drop=drop)  # S -> D_S -> S
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = Mlp(dim, channels_mlp_dim, drop=drop)  # C -> D_C -> C

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, S, C) -> (B, S, C)."""
        u = rearrange(self.norm1(x), "B S C -> B C S")  # each channel's row of S values
        x = x + self.drop_path(rearrange(self.mlp_tokens(u), "B C S -> B S C"))  # U = X + MLP_1(LN(X)^T)^T
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))  # Y = U + MLP_2(LN(U))
        return x


class MlpMixer(TesseraModel):
    """MLP-Mixer classifier (`MixerConfig`): patches (B, S, C) -> Mixer layers -> LN -> GAP -> linear."""

    family = "mixer"
    head_keys = ("head.",)

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        c = config
        img = to_2tuple(c.img_size)
        self.patch_grid = (img[0] // c.patch_size, img[1] // c.patch_size)
        seq_len = self.patch_grid[0] * self.patch_grid[1]
        self.num_features = c.embed_dim
        self.patch_size = c.patch_size
        self.num_prefix_tokens = 0
        self.stem = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.use_mask_token else None
        self.blocks = nn.ModuleList(
            MixerBlock(c.embed_dim, seq_len, c.tokens_mlp_dim, c.channels_mlp_dim, c.drop_rate, p)
            for p in drop_path_rates(c.drop_path_rate, c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = self._make_head(c.num_classes)
        self.feature_info = [
            {"num_chs": c.embed_dim, "reduction": c.patch_size, "module": f"blocks.{i}"} for i in range(c.depth)
        ]
        self.apply(_init_weights)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Images (B, C_in, H, W) -> the patch table X (B, S, C); masked rows get the mask token."""
        P = self.config.patch_size
        check_image_batch(x, self.config.in_chans, (P, P))
        expected = (self.patch_grid[0] * P, self.patch_grid[1] * P)
        if tuple(x.shape[-2:]) != expected:
            # The token-mixing MLP has S inputs: the patch count, hence the size, is fixed.
            raise ValueError(
                f"this Mixer takes {expected[0]}x{expected[1]} images, got {x.shape[-2]}x{x.shape[-1]}: "
                f"its token-mixing MLP is tied to {self.patch_grid[0] * self.patch_grid[1]} patches; "
                f"resize the input or build the model with img_size=({x.shape[-2]}, {x.shape[-1]})"
            )
        x = self.stem(x).flatten(1, 2)  # (B, H', W', C) -> (B, S, C)
        if mask is not None:
            check_token_mask(mask, x.shape[0], x.shape[1], self.mask_token is not None)
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        return x

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images (B, C_in, H, W) -> normalised patch table (B, S, C).

        `mask` (B, S) bool replaces those patch embeddings by the learned mask token
        (needs `use_mask_token=True`).
        """
        x = self._embed(x, mask)
        for blk in self.blocks:
            x = checkpointed(blk, x, enabled=self.grad_checkpointing)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """Outputs of selected blocks as maps (B, C, H', W'); indices as ViT's (None: every block).

        Mixer has no prefix tokens: with `return_prefix_tokens` each comes with a (B, 0, C) tensor.
        """
        idx = take_indices(len(self.blocks), indices, "blocks")
        z = self._embed(x, None)
        out: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(idx) + 1]):
            z = checkpointed(blk, z, enabled=self.grad_checkpointing)
            if i in idx:
                out[i] = self.norm(z) if norm else z
        tables = [out[i] for i in idx]
        maps = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.patch_grid) for t in tables]  # (B, C, H', W')
        return (maps, [t[:, :0] for t in tables]) if return_prefix_tokens else maps

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, S, C)."""
        return self.forward_tokens(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, S, C) -> global average pool -> logits (B, num_classes), or (B, C) if `pre_logits`."""
        h = features.mean(dim=1)
        return h if pre_logits else self.head(self.head_drop(h))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with `num_classes` outputs (0: identity)."""
        self.head = self._make_head(num_classes)
        self.head.apply(_init_weights)
        self.config = replace_config(self.config, num_classes=num_classes)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.normal_(m.bias, std=1e-6)


# --------------------------------------------------------------------------- registry

_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64)

# The paper's Table 1: (layers, patch, C, D_S, D_C).
_SPECS = {
    "s": (8, 512, 256, 2048),
    "b": (12, 768, 384, 3072),
    "l": (24, 1024, 512, 4096),
    "h": (32, 1280, 640, 5120),
}


def _register(name: str, size: str, patch: int) -> None:
    depth, dim, d_s, d_c = _SPECS[size]
    base = MixerConfig(
        patch_size=patch, embed_dim=dim, depth=depth, tokens_mlp_dim=d_s, channels_mlp_dim=d_c
    )

    def build(**kw) -> MlpMixer:
        return MlpMixer(replace_config(base, **kw))

    build.__name__ = name
    build.__doc__ = f"{name}: Mixer-{size.upper()}/{patch} at 224 px."
    register_model(name, kind=("classifier", "encoder"), tiny=_TINY)(build)


for _size in ("s", "b", "l"):
    for _patch in (32, 16):
        _register(f"mixer_{_size}{_patch}_224", _size, _patch)
_register("mixer_h14_224", "h", 14)
