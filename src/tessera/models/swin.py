"""Swin Transformer: hierarchical vision transformer using shifted windows.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021, arXiv:2103.14030. Notes: 004 ("Hierarchical ViT: Swin
Transformer"), 002 and 003.

Patch partition (P x P patches) -> linear embedding C -> four stages. Stage i
works on an (H/(P 2^i), W/(P 2^i)) grid with C_i = 2^i C channels; stages 2-4
start with patch merging (concatenate each 2 x 2 group -> 4C, LayerNorm,
linear 4C -> 2C). Blocks alternate W-MSA and SW-MSA:

    z^l     = W-MSA(LN(z^{l-1})) + z^{l-1},   z^l     = MLP(LN(z^l)) + z^l
    z^{l+1} = SW-MSA(LN(z^l)) + z^l,          z^{l+1} = MLP(LN(z^{l+1})) + z^{l+1}

and the head is LayerNorm -> global average pool -> linear (the official
order: the LayerNorm acts per token, before the pooling).

Any input size, with the semantics of the official detection backbone and of
Hugging Face transformers: the image is padded to patch multiples, each block
pads its normalised map to window multiples (the shift mask is computed on
the padded map) and crops after; patch merging pads odd sizes. When a stage
is not larger than the window (min(H, W) <= M), the window shrinks to
min(H, W) and the shift is dropped, decided per forward from the actual
resolution, as in transformers (the official classifier does it at build
time for its fixed input; at 224 this is why Swin-T's last stage has no shift).

This file is the plain path: each block and its (S)W-MSA sub-layer are the
notes' steps (pad, cyclic shift, partition, attention, merge, reverse shift).
The speed machinery (cached gathers and biases, chunking at CPU inference)
lives in `tessera.models.swin_fast`; models run it by default and
`set_fast_path(False)` selects the modules here. Both give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.core.base import TesseraModel, replace_config
from tessera.core.features import take_indices
from tessera.core.registry import register_model
from tessera.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    check_token_mask,
    checkpointed,
    drop_path_rates,
    resample_abs_pos_embed,
    to_2tuple,
)
from tessera.layers.window_attention import (
    WindowAttention,
    cyclic_shift,
    pad_amount,
    pad_to_windows,
    reverse_cyclic_shift,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from tessera.models.swin_fast import DEFAULT_CHUNK_TOKENS, SwinFastPath
from tessera.models.swin_global import SampledGlobalAttention

PosEmbed = Literal["rel", "none", "abs", "abs+rel"]


@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters; the defaults are Swin-T at 224 (notes 004, table (a)).

    `shift` and `pos_embed` are the ablation switches of the notes' table:
    shift=False uses regular windows (W-MSA) in every block; pos_embed picks
    the relative position bias ("rel", the paper's default), an absolute
    embedding added to the patch tokens ("abs", ViT's), both, or neither;
    appearance=False drops the QK^T/sqrt(d) term ("app.") from every attention,
    leaving Softmax(B + mask) V: the table's "rel. pos. w/o app." row.
    `use_mask_token` adds SimMIM's learned mask token (`forward_tokens(x, mask)`);
    off by default, so that foreign checkpoints load strictly.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | tuple[int, int] = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    shift: bool = True
    pos_embed: PosEmbed = "rel"
    appearance: bool = True
    use_mask_token: bool = False
    # The notes' proposal for global attention (note 004, `tessera.models.swin_global`): after each
    # stage i > 1, attention from its tokens to n_i tokens sampled from stage i-1, fused in;
    # n_1 = global_tokens, then / 4 per stage.
    global_attn: Literal["none", "sampled"] = "none"
    global_tokens: int = 196
    global_fusion: Literal["add", "max", "concat"] = "add"

    def __post_init__(self) -> None:
        for name in ("img_size", "window_size"):
            value = getattr(self, name)
            pair = (value, value) if isinstance(value, int) else tuple(value)
            if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
                raise ValueError(f"{name} must be a positive int or an (h, w) pair of them, got {value!r}")
        if not (isinstance(self.patch_size, int) and self.patch_size > 0):
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
        if self.in_chans < 1 or self.num_classes < 0 or self.embed_dim < 1:
            raise ValueError(
                f"need in_chans >= 1, num_classes >= 0, embed_dim >= 1; got {self.in_chans}, "
                f"{self.num_classes}, {self.embed_dim}"
            )
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and of equal length"
            )
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every stage needs at least one block, got depths {self.depths}")
        for i, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**i
            if heads < 1 or dim % heads:
                raise ValueError(f"stage {i}: dim {dim} (embed_dim * 2^{i}) is not divisible by {heads} heads")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("shift", "qkv_bias", "appearance", "use_mask_token"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.pos_embed not in ("rel", "none", "abs", "abs+rel"):
            raise ValueError(f"pos_embed must be one of 'rel', 'none', 'abs', 'abs+rel'; got {self.pos_embed!r}")
        if self.global_attn not in ("none", "sampled"):
            raise ValueError(f"global_attn must be 'none' or 'sampled', got {self.global_attn!r}")
        if self.global_fusion not in ("add", "max", "concat"):
            raise ValueError(f"global_fusion must be 'add', 'max' or 'concat', got {self.global_fusion!r}")
        if self.global_attn == "sampled":
            stage1 = self.grid[0] * self.grid[1]
            if not 1 <= self.global_tokens <= stage1:
                raise ValueError(
                    f"global_tokens must be in [1, {stage1}] (the stage-1 tokens of a {self.img_size} px input), "
                    f"got {self.global_tokens}"
                )
        if not self.appearance and self.pos_embed not in ("rel", "abs+rel"):
            raise ValueError(
                "appearance=False (attention from the relative position bias alone) needs pos_embed "
                f"'rel' or 'abs+rel', got {self.pos_embed!r}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid of the configured input: ceil(img_size / patch_size) (the image is padded)."""
        h, w = to_2tuple(self.img_size)
        return (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))


# ---------------------------------------------------------------- pure helpers


def stage_window(
    grid: tuple[int, int], window: tuple[int, int], shifted: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, shift) a block uses on an (H, W) map.

    Regular case: the configured window, shifted by half of it in SW-MSA blocks.
    A map not larger than the window (min(H, W) <= M) gets one window of
    min(H, W) and no shift (a shift would only wrap the map onto itself),
    as in the official code and transformers; a (M_h, M_w) window is clipped
    to min(H, W) on each axis.
    """
    H, W = grid
    if H <= window[0] or W <= window[1]:
        side = min(H, W)
        return (min(window[0], side), min(window[1], side)), (0, 0)
    return window, ((window[0] // 2, window[1] // 2) if shifted else (0, 0))


def shifted_window_attention(
    x: Tensor, attn: WindowAttention, window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """(S)W-MSA of a normalised (B, H, W, C) map of any size -> (B, H, W, C); shift (0, 0): W-MSA.

    The shift mask is computed on the padded map; padded tokens are not masked
    otherwise (as in the official code and transformers).
    """
    B, H, W, C = x.shape
    x = pad_to_windows(x, window)  # (B, Hp, Wp, C), zeros after the LayerNorm
    grid = (x.shape[1], x.shape[2])
    mask = shifted_window_mask(grid, window, shift).to(x.device) if shift[0] or shift[1] else None  # (nW, N, N)
    x = cyclic_shift(x, shift)  # roll by -M/2: the shifted windows become regular ones
    windows = window_partition(x, window)  # (B, nW, N, C)
    windows = attn(windows, mask, window)  # Softmax(Q K^T / sqrt(d) + B + mask) V in each window
    x = window_reverse(windows, window, grid)  # merge: (B, Hp, Wp, C)
    x = reverse_cyclic_shift(x, shift)  # roll back by +M/2
    return x[:, :H, :W]  # crop the padding


# ---------------------------------------------------------------- blocks


class SwinBlock(nn.Module):
    """One Swin Transformer block: (S)W-MSA and MLP, each pre-LN with a residual.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window: window size M (int or (M_h, M_w)).
        shifted: SW-MSA (cyclic shift by M/2 and mask) instead of W-MSA.
        mlp_ratio: hidden width of the MLP relative to C.
        qkv_bias: bias in the q, k, v projection.
        rel_pos: learned relative position bias in the attention.
        drop: dropout after the attention projection and in the MLP.
        drop_path: stochastic-depth probability of both residual branches.
        appearance: keep the QK^T/sqrt(d) term (False: "rel. pos. w/o app.").
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | tuple[int, int],
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        rel_pos: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        appearance: bool = True,
    ) -> None:
        super().__init__()
        self.window = to_2tuple(window)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window, qkv_bias, rel_pos, drop, appearance)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, z: Tensor) -> Tensor:
        """z: (B, H, W, C) -> (B, H, W, C)."""
        z = z + self.drop_path(self.msa(self.norm1(z)))  # ẑ = (S)W-MSA(LN(z)) + z
        z = z + self.drop_path(self.mlp(self.norm2(z)))  # z = MLP(LN(ẑ)) + ẑ
        return z

    def msa(self, x: Tensor) -> Tensor:
        """W-MSA or SW-MSA of a normalised (B, H, W, C) map."""
        window, shift = self.window_and_shift((x.shape[1], x.shape[2]))
        return shifted_window_attention(x, self.attn, window, shift)

    def window_and_shift(self, grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window and shift of this block on an (H, W) map (`stage_window`)."""
        return stage_window(grid, self.window, self.shifted)


class PatchMerging(nn.Module):
    """Concatenate each 2 x 2 group of tokens -> 4C, LayerNorm, linear 4C -> 2C (no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes get a zero row / column."""
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, pad_amount(W, 2), 0, pad_amount(H, 2)))
        # Official order of the four: (0,0), (1,0), (0,1), (1,1) as (row, column) offsets.
        x = rearrange(x, "B (H dh) (W dw) C -> B H W (dw dh C)", dh=2, dw=2)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Patch merging (all stages but the first), then `depth` blocks alternating W-MSA / SW-MSA."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int | tuple[int, int],
        downsample: bool,
        shift: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        rel_pos: bool = True,
        drop: float = 0.0,
        drop_path: tuple[float, ...] | list[float] = (),
        appearance: bool = True,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.patch_merge = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window, shift and i % 2 == 1, mlp_ratio, qkv_bias, rel_pos, drop, rates[i], appearance
            )
            for i in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, z: Tensor) -> Tensor:
        """(B, H, W, C/2) -> (B, H/2, W/2, C) through patch merging, or (B, H, W, C) kept in stage 1."""
        z = self.patch_merge(z)
        for block in self.blocks:
            z = checkpointed(block, z, enabled=self.grad_checkpointing)  # recomputed in backward if enabled
        return z


# ---------------------------------------------------------------- model


class SwinTransformer(TesseraModel):
    """Swin Transformer classifier and hierarchical backbone.

    Encoder API (for dense heads and wrappers such as SimMIM or DPT):
    `forward_tokens(x, mask=None)` gives the final LayerNorm'd tokens
    (B, H_L W_L, C_L), row-major over the last stage's grid (a mask over the
    stage-1 patches swaps their embeddings for the learned `mask_token`, built
    with `use_mask_token=True`); `forward_intermediates(x, indices)` one
    (B, C_i, H_i, W_i) map per stage (the stage output, before the next patch
    merging), with `feature_info` listing C_i and the stride; Swin has no
    prefix tokens. `forward_features(x)` gives the final LayerNorm'd
    (B, H, W, C) map.

    The stages run through `tessera.models.swin_fast.SwinFastPath` (the same
    computation with cached gathers and biases, and chunking at CPU inference)
    unless `set_fast_path(False)` selects the plain modules, which read like
    the notes.
    """

    family = "swin"
    head_keys = ("head.",)
    num_prefix_tokens = 0  # no class token: every token is a patch

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.embed_dim * 2**i for i in range(len(c.depths))]
        self.num_features = dims[-1]
        self.patch_size = c.patch_size

        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim, norm=True, pad=True)
        # SimMIM's learned token for masked patches (forward_tokens(x, mask)); only when asked
        # for, so that timm / transformers / official checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.use_mask_token else None
        # Absolute position embedding ("abs" ablation), learned on the configured grid.
        self.abs_pos_embed = (
            nn.Parameter(torch.zeros(1, *c.grid, c.embed_dim)) if c.pos_embed in ("abs", "abs+rel") else None
        )
        self.pos_drop = nn.Dropout(c.drop_rate)

        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))  # linear in depth over all blocks
        starts = [sum(c.depths[:i]) for i in range(len(c.depths))]
        self.stages = nn.ModuleList(
            SwinStage(
                dims[i],
                c.depths[i],
                c.num_heads[i],
                c.window_size,
                downsample=i > 0,
                shift=c.shift,
                mlp_ratio=c.mlp_ratio,
                qkv_bias=c.qkv_bias,
                rel_pos=c.pos_embed in ("rel", "abs+rel"),
                drop=c.drop_rate,
                drop_path=rates[starts[i] : starts[i] + c.depths[i]],
                appearance=c.appearance,
            )
            for i in range(len(c.depths))
        )
        # global_attn[i - 1] follows stage i: its tokens attend to tokens sampled from stage i - 1.
        self.global_attn = (
            nn.ModuleList(
                SampledGlobalAttention(dims[i - 1], dims[i], max(1, c.global_tokens // 4 ** (i - 1)), c.global_fusion)
                for i in range(1, len(dims))
            )
            if c.global_attn == "sampled"
            else None
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"num_chs": dims[i], "reduction": c.patch_size * 2**i, "module": f"stages.{i}"}
            for i in range(len(dims))
        ]
        # The performance machinery (swin_fast.py); None runs the plain modules.
        self.fast_path: SwinFastPath | None = SwinFastPath(DEFAULT_CHUNK_TOKENS)
        self.apply(_init_weights)
        for p in (self.abs_pos_embed, self.mask_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    # -- encoder

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Patch partition + linear embedding (+ mask token, + absolute position).

        Args:
            x: images (B, C_in, H, W).
            mask: (B, N_patches) bool over the row-major (H/P, W/P) patch grid
                (after padding to patch multiples); True: replace the patch's
                embedding by the mask token.

        Returns:
            z_0, (B, H/P, W/P, C).
        """
        z = self.patch_embed(x)  # checks the input; pads H, W to patch multiples
        if mask is not None:
            z = self._apply_mask_token(z, mask)
        if self.abs_pos_embed is not None:
            z = z + self._abs_pos_embed((z.shape[1], z.shape[2]))
        return self.pos_drop(z)

    def _apply_mask_token(self, z: Tensor, mask: Tensor) -> Tensor:
        """SimMIM: masked patch embeddings (after the patch LayerNorm, before the position) -> mask token."""
        B, H, W, C = z.shape
        check_token_mask(mask, B, H * W, self.mask_token is not None)
        return torch.where(mask.view(B, H, W, 1), self.mask_token.view(1, 1, 1, C).to(z.dtype), z)

    def _abs_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """The learned (1, H, W, C) embedding, bicubic-resampled when the grid is not the configured one."""
        pos = self.abs_pos_embed
        if tuple(grid) == tuple(pos.shape[1:3]):
            return pos
        flat = resample_abs_pos_embed(pos.flatten(1, 2), grid, old_grid=tuple(pos.shape[1:3]), num_prefix_tokens=0)
        return flat.reshape(1, grid[0], grid[1], -1)

    def stage_forward(self, i: int, z: Tensor) -> Tensor:
        """Stage i on z (B, H, W, C), then, with global attention, attention to tokens sampled from z."""
        out = self.run_stage(self.stages[i], z)
        if self.global_attn is not None and i > 0:
            out = self.global_attn[i - 1](z, out)
        return out

    def run_stage(self, stage: SwinStage, z: Tensor) -> Tensor:
        """One stage, (B, H, W, C) -> (B, H', W', C'): through the fast path, or the plain modules."""
        return stage(z) if self.fast_path is None else self.fast_path.run_stage(stage, z)

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C_in, H, W) -> final LayerNorm'd tokens (B, H_L W_L, C_L), row-major over the last grid.

        `mask`: (B, N_patches) bool over the stage-1 patches (see `embed`); needs `use_mask_token=True`.
        """
        z = self.embed(x, mask)
        for i in range(len(self.stages)):
            z = self.stage_forward(i, z)
        return self.norm(z).flatten(1, 2)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """Stage outputs as maps (B, C_i, H_i, W_i), before the next patch merging.

        Args:
            x: images (B, C_in, H, W).
            indices: stage indices (negative count from the end), an int n (the
                last n stages), or None (every stage). Maps come in this order.
            norm: apply the final LayerNorm to the last stage's map (as
                `forward_features` does); other stages have no norm of their own.
            return_prefix_tokens: also return one (B, 0, C_i) tensor per map:
                Swin has no prefix tokens.

        Returns:
            The maps, or (maps, prefix tokens) with `return_prefix_tokens`.
        """
        take = take_indices(len(self.stages), indices, "stages")
        last = len(self.stages) - 1
        z = self.embed(x)
        outputs: dict[int, Tensor] = {}
        for i in range(max(take) + 1):
            z = self.stage_forward(i, z)  # (B, H_i, W_i, C_i)
            if i in take:
                out = self.norm(z) if norm and i == last else z
                outputs[i] = out.permute(0, 3, 1, 2).contiguous()  # (B, C_i, H_i, W_i)
        maps = [outputs[i] for i in take]
        if not return_prefix_tokens:
            return maps
        return maps, [m.new_zeros(m.shape[0], 0, m.shape[1]) for m in maps]

    def features(self, x: Tensor) -> list[Tensor]:
        """Hierarchical feature maps for dense heads: [(B, C_i, H_i, W_i)] (see `feature_info`)."""
        return self.forward_intermediates(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> LayerNorm'd last-stage map (B, H/32, W/32, 8C) for P = 4."""
        z = self.embed(x)
        for i in range(len(self.stages)):
            z = self.stage_forward(i, z)
        return self.norm(z)

    # -- classifier

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool of (B, H, W, C) features -> (B, C), then the linear head."""
        pooled = features.mean(dim=(1, 2))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """New head for `num_classes` classes (0: no head, forward gives pooled features)."""
        self.config = replace_config(self.config, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def min_dynamic_size(self) -> int:
        """Smallest image side (a multiple of the patch) whose every stage is at least one window.

        One exported graph with a dynamic size serves sides from here up: in that
        range each block keeps its window and only the shift depends on the size
        (`swin_fast.traced_window_and_shift`). Below it a stage's window shrinks to
        the map, a different graph: export such sizes one at a time. Swin-T: 196.
        """
        c = self.config
        window = max(to_2tuple(c.window_size))
        side = c.patch_size
        while True:
            grid = math.ceil(side / c.patch_size)
            for _ in c.depths[1:]:  # patch merging halves the grid (rounding up): the last stage is the smallest
                grid = math.ceil(grid / 2)
            if grid >= window:
                return side
            side += c.patch_size

    # -- settings

    def set_fast_path(self, enable: bool = True, chunk_tokens: int | str | None = DEFAULT_CHUNK_TOKENS) -> None:
        """Run the stages through `SwinFastPath` (True, the default) or the plain modules (False).

        Both compute the same function with the same parameters (see
        swin_fast.py); the plain path is the reference that reads like the notes.
        """
        self.fast_path = SwinFastPath(chunk_tokens) if enable else None

    def set_inference_chunking(self, max_tokens: int | str | None = DEFAULT_CHUNK_TOKENS) -> None:
        """At CPU inference, compute in chunks of at most `max_tokens` tokens ("auto": sized from the
        CPU's cache per stage, the default; None: off).

        Each stage runs on groups of whole images of at most `max_tokens`
        tokens (at least one image); where one image has more, each block
        attends over groups of windows and runs its MLP half on groups of
        tokens of that size. The result is the same (float rounding of the
        batched matmuls may differ by ~1e-7); smaller pieces keep the
        intermediates in cache and out of memory. Training (autograd or train
        mode) and other devices are never chunked. Part of the fast path
        (swin_fast.py), which this turns on.
        """
        self.set_fast_path(True, max_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory while training)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay: position encodings (official recipe), mask token."""
        return {
            n
            for n, _ in self.named_parameters()
            if n in ("abs_pos_embed", "mask_token") or n.endswith("rel_pos_bias.table")
        }


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- registry

# Seconds-fast variant for the contract tests: a 16 x 16 grid, window 4, two
# blocks per stage, so both stages run W-MSA and SW-MSA with its mask.
_TINY = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)


def _build(base: SwinConfig, overrides: dict) -> SwinTransformer:
    return SwinTransformer(replace_config(base, **overrides))


# Stochastic depth of the paper's ImageNet-1K training (appendix A2.1): 0.2 / 0.3 / 0.5 for
# T / S / B; the 384 models are ImageNet-22K -> 1K fine-tunes, 0.2 in the official configs.


@register_model("swin_tiny_patch4_window7_224", kind=("classifier", "encoder"), tiny=_TINY)
def swin_tiny_patch4_window7_224(**kw) -> SwinTransformer:
    """Swin-T: C = 96, depths 2-2-6-2, 28.3M params, 4.5G MACs at 224."""
    return _build(SwinConfig(drop_path_rate=0.2), kw)


@register_model("swin_small_patch4_window7_224", kind=("classifier", "encoder"), tiny=_TINY)
def swin_small_patch4_window7_224(**kw) -> SwinTransformer:
    """Swin-S: C = 96, depths 2-2-18-2, 50M params, 8.7G MACs at 224."""
    return _build(SwinConfig(depths=(2, 2, 18, 2), drop_path_rate=0.3), kw)


@register_model("swin_base_patch4_window7_224", kind=("classifier", "encoder"), tiny=_TINY)
def swin_base_patch4_window7_224(**kw) -> SwinTransformer:
    """Swin-B: C = 128, depths 2-2-18-2, 88M params, 15.4G MACs at 224."""
    return _build(SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5), kw)


@register_model("swin_base_patch4_window12_384", kind=("classifier", "encoder"), tiny=_TINY)
def swin_base_patch4_window12_384(**kw) -> SwinTransformer:
    """Swin-B at 384 with 12 x 12 windows: 88M params, 47.0G MACs."""
    base = SwinConfig(
        img_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, drop_path_rate=0.2
    )
    return _build(base, kw)


@register_model("swin_large_patch4_window12_384", kind=("classifier", "encoder"), tiny=_TINY)
def swin_large_patch4_window12_384(**kw) -> SwinTransformer:
    """Swin-L at 384 with 12 x 12 windows: 197M params, 103.9G MACs."""
    base = SwinConfig(
        img_size=384, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, drop_path_rate=0.2
    )
    return _build(base, kw)
