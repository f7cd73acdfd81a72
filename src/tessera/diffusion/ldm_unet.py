"""The conditional noise network eps_theta(z_t, t, tau_theta(y)) of latent diffusion.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752, sec. 3.3; notes 002 ("Stable Diffusion": "Cross Attention is applied in
the mid-layers and skip connections").

The DDPM UNet's residual blocks (`tessera.diffusion.unet.ResBlock`, time embedding added per
channel), with a spatial transformer after each residual block of the chosen levels and in
the middle. A spatial transformer is

    h = proj_in(GN(z))                     (B, C, H, W) -> (B, H W, C) tokens
    h = h + SelfAttn(LN(h))
    h = h + CrossAttn(LN(h), context)      Q = W_Q h,  K = W_K tau(y),  V = W_V tau(y)
    h = h + GEGLU-FF(LN(h))
    z = z + proj_out(h)                    back to (B, C, H, W)

with the context tau_theta(y) of shape (B, M, d_r) from a conditioning encoder
(`tessera.diffusion.conditioning`). The time embedding is Stable Diffusion's
(`flip_sin_to_cos=True`, frequencies over dim/2: [cos, sin]), not DDPM's [sin, cos].
The layout converts to and from diffusers' UNet2DConditionModel (`ldm_convert`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import register_model
from tessera.diffusion.unet import Downsample, ResBlock, TimeEmbedding, Upsample, timestep_embedding
from tessera.layers import Attention, CrossAttention, check_image_batch

__all__ = [
    "LDMUNet",
    "LDMUNetConfig",
    "SpatialTransformer",
    "ldm_unet_digits",
    "ldm_unet_f4",
    "sd_timestep_embedding",
]


@dataclass(frozen=True)
class LDMUNetConfig:
    """A conditional latent-diffusion UNet.

    Attributes:
        img_size: latent side the model is built for (example inputs; any multiple of the
            downsampling factor works).
        in_chans: latent channels of z_t (the output has as many).
        widths: channels of each resolution level; level i works at img_size / 2^i.
        depth: residual blocks per level on the way down (the way up has depth + 1).
        transformer_levels: levels (0 = full resolution) whose residual blocks are each followed
            by a spatial transformer, down and up; the middle always has one.
        heads: attention heads of each level's transformers (the middle uses the last).
        transformer_depth: transformer blocks inside one spatial transformer.
        context_dim: width d_r of the context tau_theta(y) (B, M, d_r).
        ff_mult: GEGLU hidden width = ff_mult x channels.
        dropout: inside each residual block.
        norm_groups: GroupNorm groups of every block.
        norm_eps: GroupNorm epsilon of the residual blocks and the output norm (diffusers: 1e-5).
    """

    img_size: int = 8
    in_chans: int = 4
    widths: tuple[int, ...] = (128, 256, 256)
    depth: int = 2
    transformer_levels: tuple[int, ...] = (0, 1, 2)
    heads: tuple[int, ...] = (4, 8, 8)
    transformer_depth: int = 1
    context_dim: int = 128
    ff_mult: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        L = len(self.widths)
        if not self.widths or self.depth < 1 or self.transformer_depth < 1:
            raise ValueError(
                f"need widths, depth >= 1 and transformer_depth >= 1, got widths={self.widths}, "
                f"depth={self.depth}, transformer_depth={self.transformer_depth}"
            )
        if len(self.heads) != L:
            raise ValueError(f"heads needs one entry per level ({L}), got {self.heads}")
        bad = [lvl for lvl in self.transformer_levels if not 0 <= lvl < L]
        if bad:
            raise ValueError(f"transformer_levels {bad} are not levels of a {L}-level UNet (0..{L - 1})")
        bad = [w for w in self.widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"widths {bad} are not divisible by norm_groups={self.norm_groups}")
        for i, (w, h) in enumerate(zip(self.widths, self.heads)):
            if (i in self.transformer_levels or i == L - 1) and (h < 1 or w % h):
                raise ValueError(f"level {i}: width {w} is not divisible by heads={h}")
        if self.context_dim < 1:
            raise ValueError(f"context_dim must be >= 1, got {self.context_dim}")
        if self.img_size % self.downsample_factor:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by the UNet's downsampling factor "
                f"{self.downsample_factor} ({L} levels)"
            )

    @property
    def downsample_factor(self) -> int:
        """Latent height and width must be multiples of this: 2^(levels - 1)."""
        return 2 ** (len(self.widths) - 1)

    @property
    def time_dim(self) -> int:
        """Width of the time embedding: 4 x widths[0]."""
        return 4 * self.widths[0]


def sd_timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Stable Diffusion's sinusoid: [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2)).

    diffusers' `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`; DDPM's
    `tessera.diffusion.unet.timestep_embedding` divides by dim/2 - 1 and puts sin first.
    """
    return timestep_embedding(t, dim, max_period, freq_shift=0.0, flip_sin_to_cos=True)


def SDTimeEmbedding(dim: int, time_dim: int) -> TimeEmbedding:  # noqa: N802 (a configured module)
    """temb = W2 SiLU(W1 sd_sinusoid(t)): the DDPM time MLP on Stable Diffusion's sinusoid."""
    return TimeEmbedding(dim, time_dim, freq_shift=0.0, flip_sin_to_cos=True)


class GEGLU(nn.Module):
    """FF(h) = W_2 (a * GELU(g)), [a, g] = W_1 h (Shazeer 2020, arXiv:2002.05202)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: Tensor) -> Tensor:
        a, g = self.proj(h).chunk(2, dim=-1)
        return self.fc2(a * F.gelu(g))


class TransformerBlock(nn.Module):
    """h = h + SA(LN(h)); h = h + CA(LN(h), context); h = h + FF(LN(h)). Tokens (B, N, C)."""

    def __init__(self, dim: int, heads: int, context_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, qkv_bias=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim, ff_mult * dim)

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        h = h + self.attn1(self.norm1(h))                                 # self-attention over the H W positions
        h = h + self.attn2(self.norm2(h), context)                        # Q from h, K and V from tau_theta(y)
        return h + self.ff(self.norm3(h))                                 # GEGLU feed-forward


class SpatialTransformer(nn.Module):
    """z + proj_out(blocks(proj_in(GN(z)), context)): (B, C, H, W), (B, M, d_r) -> (B, C, H, W)."""

    def __init__(
        self, ch: int, heads: int, context_dim: int, depth: int, ff_mult: int, groups: int
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)  # diffusers' Transformer2DModel fixes 1e-6
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.blocks = nn.ModuleList(TransformerBlock(ch, heads, context_dim, ff_mult) for _ in range(depth))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        H, W = z.shape[-2:]
        h = rearrange(self.proj_in(self.norm(z)), "B C H W -> B (H W) C")  # (B, N, C)
        for block in self.blocks:
            h = block(h, context)
        return z + self.proj_out(rearrange(h, "B (H W) C -> B C H W", H=H, W=W))


class CondLevel(nn.Module):
    """One resolution level: residual blocks, each followed by a spatial transformer where chosen."""

    def __init__(
        self, blocks: list[ResBlock], transformers: list[SpatialTransformer], resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.transformers = nn.ModuleList(transformers)  # empty, or one per block
        self.resample = resample


class LDMUNet(TesseraModel):
    """eps_theta(z_t, t, context): (B, C, h, w), (B,), (B, M, d_r) -> (B, C, h, w)."""

    family = "ldm_unet"
    head_keys = ()

    def __init__(self, config: LDMUNetConfig | None = None) -> None:
        config = config or LDMUNetConfig()
        super().__init__(config)
        c = config
        groups, eps = c.norm_groups, c.norm_eps
        self.grad_checkpointing = False

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, c.time_dim, c.dropout, groups, eps)

        def st(ch: int, level: int) -> SpatialTransformer:
            return SpatialTransformer(ch, c.heads[level], c.context_dim, c.transformer_depth, c.ff_mult, groups)

        self.time_embed = SDTimeEmbedding(c.widths[0], c.time_dim)
        self.conv_in = nn.Conv2d(c.in_chans, c.widths[0], 3, padding=1)

        L = len(c.widths)
        skip_chans = [c.widths[0]]
        self.down = nn.ModuleList()
        ch = c.widths[0]
        for i, width in enumerate(c.widths):
            blocks, transformers = [], []
            for _ in range(c.depth):
                blocks.append(res(ch, width))
                ch = width
                skip_chans.append(ch)
                if i in c.transformer_levels:
                    transformers.append(st(ch, i))
            last = i == L - 1
            if not last:
                skip_chans.append(ch)
            self.down.append(CondLevel(blocks, transformers, None if last else Downsample(ch)))

        self.mid_block1 = res(ch, ch)
        self.mid_transformer = st(ch, L - 1)
        self.mid_block2 = res(ch, ch)

        self.up = nn.ModuleList()
        for i in reversed(range(L)):
            width = c.widths[i]
            blocks, transformers = [], []
            for _ in range(c.depth + 1):
                blocks.append(res(ch + skip_chans.pop(), width))
                ch = width
                if i in c.transformer_levels:
                    transformers.append(st(ch, i))
            self.up.append(CondLevel(blocks, transformers, Upsample(ch) if i > 0 else None))

        self.norm_out = nn.GroupNorm(groups, ch, eps=eps)
        self.conv_out = nn.Conv2d(ch, c.in_chans, 3, padding=1)

    # ----------------------------------------------------------------- inputs
    def check_input(self, x: Tensor, context: Tensor | None) -> None:
        """ValueError unless x is (B, in_chans, h, w) float with h, w multiples of 2^(L-1) and context (B, M, d_r)."""
        c = self.config
        check_image_batch(x, c.in_chans)
        f = c.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"latent height and width must be divisible by {f} (the UNet downsamples "
                f"{len(c.widths) - 1} times), got {x.shape[-2]}x{x.shape[-1]}"
            )
        if context is None:
            raise ValueError(
                f"this UNet is conditional: pass cond=context of shape (B, M, {c.context_dim}) "
                "(the null context of the conditioning encoder for unconditional samples)"
            )
        if not isinstance(context, Tensor) or context.ndim != 3 or not context.is_floating_point():
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context must be a float tensor (B, M, {c.context_dim}), got {got}")
        if context.shape[0] != x.shape[0] or context.shape[2] != c.context_dim or context.shape[1] < 1:
            raise ValueError(
                f"context must have shape (B={x.shape[0]}, M>=1, d_r={c.context_dim}), got {tuple(context.shape)}"
            )

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """(z_t, t, context): a noisy latent batch, timesteps, and a 3-token context."""
        c = self.config
        return (
            torch.randn(batch_size, c.in_chans, c.img_size, c.img_size),
            torch.randint(0, 1000, (batch_size,)),
            torch.randn(batch_size, 3, c.context_dim),
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every residual block and spatial transformer in backward."""
        self.grad_checkpointing = enable

    def _run(self, module: nn.Module, *args: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        """eps_theta(z_t, t, tau(y)): x (B, C, h, w), t (B,) or scalar, cond (B, M, d_r) -> (B, C, h, w)."""
        context = cond
        self.check_input(x, context)
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t.shape)}")
        context = context.to(x.dtype)
        temb = self.time_embed(t).to(x.dtype)                            # (B, time_dim)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i, block in enumerate(level.blocks):
                h = self._run(block, h, temb)
                if len(level.transformers):
                    h = self._run(level.transformers[i], h, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)                                    # (B, C, h/2, w/2)
                skips.append(h)

        h = self._run(self.mid_block1, h, temb)
        h = self._run(self.mid_transformer, h, context)                  # cross-attention in the middle
        h = self._run(self.mid_block2, h, temb)

        for level in self.up:
            for i, block in enumerate(level.blocks):
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), temb)  # concat the skip along C
                if len(level.transformers):
                    h = self._run(level.transformers[i], h, context)
            if level.resample is not None:
                h = level.resample(h)                                    # (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- registry

# Tiny variant for the registry-wide contract tests.
_TINY = dict(
    img_size=8, in_chans=4, widths=(8, 16), depth=1, transformer_levels=(0, 1), heads=(2, 2),
    context_dim=8, norm_groups=4,
)


@register_model("ldm_unet_digits", kind="denoiser", tiny=_TINY)
def ldm_unet_digits(**overrides) -> LDMUNet:
    """A small conditional UNet for 8x8x4 latents of the digits, sized for a 2-core CPU.

    Widths (32, 64), one residual block per level, a spatial transformer after each of them
    and in the middle, a 32-wide context.
    """
    base = LDMUNetConfig(
        img_size=8, in_chans=4, widths=(32, 64), depth=1, transformer_levels=(0, 1), heads=(1, 2),
        context_dim=32, norm_groups=8,
    )
    return LDMUNet(replace_config(base, **overrides))


@register_model("ldm_unet_f4", kind="denoiser", tiny=_TINY)
def ldm_unet_f4(**overrides) -> LDMUNet:
    """LDM-f4-sized UNet (widths 128-256-256, 2 blocks per level, transformers at every level)."""
    return LDMUNet(replace_config(LDMUNetConfig(), **overrides))
