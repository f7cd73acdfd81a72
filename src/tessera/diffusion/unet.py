"""The noise network eps_theta(x_t, t) of DDPM (Ho et al. 2020, arXiv:2006.11239, appendix B).

A UNet (Ronneberger et al.) in the PixelCNN++ style: each resolution level has
`depth` residual blocks (GroupNorm, SiLU, 3x3 convs, the time embedding added
in the middle), self-attention at the chosen resolutions, a stride-2 conv down
and nearest-upsample + conv up, and skip connections from every down-path
activation to the matching up-path block. The time t enters through a
sinusoidal embedding and a 2-layer MLP; an optional class label adds a learned
embedding to it. The network maps (x_t, t) to a tensor shaped like x_t; it
knows nothing about the noise schedule.

Convolutional, so tensors are (B, C, H, W) throughout; attention works on
(B, N, C) tokens with N = H W. The layout converts to and from diffusers'
UNet2DModel (`tessera.diffusion.convert`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.layers import Attention, check_image_batch, checkpointed
from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import create_model, list_models, register_model

__all__ = [
    "UNet",
    "UNetConfig",
    "create_unet",
    "list_unets",
    "timestep_embedding",
    "unet_ddpm_cifar10",
    "unet_digits",
]


@dataclass(frozen=True)
class UNetConfig:
    """A DDPM UNet. Defaults are the DDPM CIFAR-10 model (35.7M parameters).

    Attributes:
        img_size: training resolution; with `attn_resolutions` it fixes the attention levels.
        in_chans: channels of x_t (the output has the same number).
        widths: channels of each resolution level; level i works at img_size / 2^i.
        depth: residual blocks per level on the way down (the way up has depth + 1).
        attn_resolutions: resolutions (in pixels) whose levels get self-attention.
        head_dim: channels per attention head; None gives one head (DDPM).
        dropout: inside each residual block (DDPM: 0.1 on CIFAR-10).
        num_classes: > 0 adds a learned class embedding to the time embedding.
        norm_groups: GroupNorm groups; every width must be divisible by it.
        norm_eps: GroupNorm epsilon (DDPM's TensorFlow code: 1e-6).
    """

    img_size: int = 32
    in_chans: int = 3
    widths: tuple[int, ...] = (128, 256, 256, 256)
    depth: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    head_dim: int | None = None
    dropout: float = 0.1
    num_classes: int = 0
    norm_groups: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if not self.widths or self.depth < 1:
            raise ValueError(f"need at least one level and depth >= 1, got widths={self.widths}, depth={self.depth}")
        bad = [w for w in self.widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"widths {bad} are not divisible by norm_groups={self.norm_groups}")
        if self.head_dim is not None:
            bad = [w for w, r in zip(self.widths, self.resolutions) if r in self.attn_resolutions and w % self.head_dim]
            if bad or self.widths[-1] % self.head_dim:
                raise ValueError(f"attention widths {bad or [self.widths[-1]]} are not divisible by head_dim={self.head_dim}")
        if self.img_size % self.downsample_factor:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by the UNet's downsampling factor "
                f"{self.downsample_factor} ({len(self.widths)} levels)"
            )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Resolution of each level at img_size."""
        return tuple(self.img_size >> i for i in range(len(self.widths)))

    @property
    def attn_levels(self) -> tuple[bool, ...]:
        """Whether each level has self-attention."""
        return tuple(r in self.attn_resolutions for r in self.resolutions)

    @property
    def downsample_factor(self) -> int:
        """Input height and width must be multiples of this: 2^(levels - 1)."""
        return 2 ** (len(self.widths) - 1)

    @property
    def time_dim(self) -> int:
        """Width of the time embedding: 4 x widths[0], as in DDPM."""
        return 4 * self.widths[0]


def timestep_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 1.0, flip_sin_to_cos: bool = False
) -> Tensor:
    """Sinusoidal embedding of t: [sin(t w_k), cos(t w_k)], w_k = max_period^(-k / (dim/2 - freq_shift)).

    DDPM's is freq_shift=1, sin first; Stable Diffusion's (diffusers' `flip_sin_to_cos=True,
    freq_shift=0`) puts cos first.

    Args:
        t: (B,) timesteps (integers or floats).
        dim: even embedding width.

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = t.float()[:, None] * freqs[None, :]                          # (B, dim/2)
    sin, cos = angles.sin(), angles.cos()
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """temb = W2 SiLU(W1 sinusoid(t)): (B,) -> (B, time_dim); the sinusoid's options as `timestep_embedding`."""

    def __init__(self, dim: int, time_dim: int, freq_shift: float = 1.0, flip_sin_to_cos: bool = False) -> None:
        super().__init__()
        self.dim, self.freq_shift, self.flip_sin_to_cos = dim, freq_shift, flip_sin_to_cos
        self.fc1 = nn.Linear(dim, time_dim)
        self.fc2 = nn.Linear(time_dim, time_dim)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) -> (B, time_dim)."""
        # The sinusoid is computed in float32 (t up to 1000 times frequencies near 1 needs the mantissa),
        # then cast to the weights' dtype so that a bf16 / fp16 UNet runs.
        emb = timestep_embedding(t, self.dim, freq_shift=self.freq_shift, flip_sin_to_cos=self.flip_sin_to_cos)
        return self.fc2(F.silu(self.fc1(emb.to(self.fc1.weight.dtype))))


class ResBlock(nn.Module):
    """h = Conv(SiLU(GN(x))) + W temb;  out = skip(x) + Conv(Dropout(SiLU(GN(h))))."""

    def __init__(
        self, in_ch: int, out_ch: int, time_dim: int, dropout: float, groups: int, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # 1x1 conv where the width changes (DDPM's "nin_shortcut")
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), temb: (B, time_dim) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]           # add the time embedding per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """x + Attention(GN(x)) over the H W positions (multi-head, through SDPA)."""

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        self.attn = Attention(ch, num_heads, qkv_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        H, W = x.shape[-2:]
        tokens = rearrange(self.norm(x), "B C H W -> B (H W) C")         # (B, N, C)
        return x + rearrange(self.attn(tokens), "B (H W) C -> B C H W", H=H, W=W)


class Downsample(nn.Module):
    """3x3 conv with stride 2: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention where chosen, then a resampler."""

    def __init__(self, blocks: list[ResBlock], attns: list[AttnBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)  # empty, or one per block
        self.resample = resample  # Downsample / Upsample, or None at the lowest / top level

    def block(self, i: int, x: Tensor, temb: Tensor) -> Tensor:
        """Block i (and its attention, if any)."""
        x = self.blocks[i](x, temb)
        return self.attns[i](x) if len(self.attns) else x


class UNet(TesseraModel):
    """eps_theta(x_t, t[, y]): (B, C, H, W), (B,) [, (B,)] -> (B, C, H, W)."""

    family = "unet"
    head_keys = ()

    def __init__(self, config: UNetConfig | None = None) -> None:
        config = config or UNetConfig()
        super().__init__(config)
        c = config
        groups, eps = c.norm_groups, c.norm_eps

        def heads(ch: int) -> int:
            return 1 if c.head_dim is None else ch // c.head_dim

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, c.time_dim, c.dropout, groups, eps)

        def attn(ch: int) -> AttnBlock:
            return AttnBlock(ch, heads(ch), groups, eps)

        self.time_embed = TimeEmbedding(c.widths[0], c.time_dim)
        self.class_embed = nn.Embedding(c.num_classes, c.time_dim) if c.num_classes > 0 else None
        self.conv_in = nn.Conv2d(c.in_chans, c.widths[0], 3, padding=1)

        # down path: skip_chans records the width of every activation pushed on the skip stack
        L = len(c.widths)
        skip_chans = [c.widths[0]]
        self.down = nn.ModuleList()
        ch = c.widths[0]
        for i, width in enumerate(c.widths):
            blocks = []
            for _ in range(c.depth):
                blocks.append(res(ch, width))
                ch = width
                skip_chans.append(ch)
            attns = [attn(ch) for _ in range(c.depth)] if c.attn_levels[i] else []
            last = i == L - 1
            if not last:
                skip_chans.append(ch)
            self.down.append(Level(blocks, attns, None if last else Downsample(ch)))

        # middle: ResBlock, attention, ResBlock at the lowest resolution
        self.mid_block1 = res(ch, ch)
        self.mid_attn = attn(ch)
        self.mid_block2 = res(ch, ch)

        # up path: depth + 1 blocks per level, each taking one skip activation
        self.up = nn.ModuleList()
        for i in reversed(range(L)):
            width = c.widths[i]
            blocks = []
            for _ in range(c.depth + 1):
                blocks.append(res(ch + skip_chans.pop(), width))
                ch = width
            attns = [attn(ch) for _ in range(c.depth + 1)] if c.attn_levels[i] else []
            self.up.append(Level(blocks, attns, Upsample(ch) if i > 0 else None))

        self.norm_out = nn.GroupNorm(groups, ch, eps=eps)
        self.conv_out = nn.Conv2d(ch, c.in_chans, 3, padding=1)

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless x is a (B, in_chans, H, W) float batch with H, W multiples of 2^(levels-1)."""
        check_image_batch(x, self.config.in_chans)
        f = self.config.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"input height and width must be divisible by {f} (the UNet downsamples "
                f"{len(self.config.widths) - 1} times), got {x.shape[-2]}x{x.shape[-1]}"
            )

    def check_labels(self, y: Tensor | None, B: int) -> None:
        """Raise a ValueError unless y is a (B,) integer tensor of classes in [0, num_classes)."""
        K = self.config.num_classes
        if y is None:
            raise ValueError("this UNet is class-conditional: pass class labels y of shape (B,)")
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            found = y.dtype if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"class labels must be an integer tensor of shape (B,), got {found}")
        if y.shape != (B,):
            raise ValueError(f"class labels must have shape (B,) = ({B},), got {tuple(y.shape)}")
        if B and (int(y.min()) < 0 or int(y.max()) >= K):
            bad = y[(y < 0) | (y >= K)][:4].tolist()
            raise ValueError(f"class labels must lie in [0, num_classes) = [0, {K}), got {bad}")

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """(x_t, t, labels): a noisy batch, timesteps, and class labels when the UNet is conditional."""
        c = self.config
        x = torch.randn(batch_size, c.in_chans, c.img_size, c.img_size)
        t = torch.randint(0, 1000, (batch_size,))
        return (x, t, torch.randint(0, c.num_classes, (batch_size,))) if c.num_classes else (x, t)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of x_t at the training resolution."""
        return (self.config.in_chans, self.config.img_size, self.config.img_size)

    def forward(self, x: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        """eps_theta(x_t, t): x_t (B, C, H, W), t (B,) or a scalar, cond (B,) class labels -> (B, C, H, W)."""
        y = cond
        self.check_input(x)
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({B},), got {tuple(t.shape)}")
        temb = self.time_embed(t)                                        # (B, time_dim)
        if self.class_embed is not None:
            self.check_labels(y, B)
            temb = temb + self.class_embed(y)                            # temb + embedding(y)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=0) but class labels y were given")

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i in range(len(level.blocks)):
                h = checkpointed(level.block, i, h, temb, enabled=self.grad_checkpointing)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)                                    # (B, C, H/2, W/2)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        for level in self.up:
            for i in range(len(level.blocks)):
                h = torch.cat([h, skips.pop()], dim=1)  # concat the skip along C
                h = checkpointed(level.block, i, h, temb, enabled=self.grad_checkpointing)
            if level.resample is not None:
                h = level.resample(h)                                    # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- registry

# Tiny variant for the registry-wide contract tests.
_TINY = dict(img_size=16, widths=(8, 16), depth=1, attn_resolutions=(8,), norm_groups=4, dropout=0.0)


@register_model("unet_ddpm_cifar10", kind="denoiser", tiny=_TINY)
def unet_ddpm_cifar10(**overrides) -> UNet:
    """Ho et al. 2020, CIFAR-10: ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16 (35.7M)."""
    return UNet(replace_config(UNetConfig(), **overrides))


@register_model("unet_digits", kind="denoiser", tiny=_TINY)
def unet_digits(**overrides) -> UNet:
    """A small UNet for 32x32 grayscale digits.

    0.69M parameters, 94M MACs per image on a 2-core CPU (widths (32, 64, 64) would cost
    2.6x more for the same blurry 8x8-born digits); attention at 8x8.
    """
    base = UNetConfig(
        img_size=32, in_chans=1, widths=(16, 32, 64), depth=1, attn_resolutions=(8,), dropout=0.0, norm_groups=8
    )
    return UNet(replace_config(base, **overrides))


def list_unets() -> list[str]:
    """Deprecated: `tessera.list_models(kind="denoiser")`."""
    warnings.warn("list_unets is deprecated; use tessera.list_models(kind='denoiser')", DeprecationWarning, 2)
    return list_models(kind="denoiser")


def create_unet(name: str = "unet_ddpm_cifar10", **overrides) -> UNet:
    """Deprecated: `tessera.create_model(name, **overrides)`."""
    warnings.warn("create_unet is deprecated; use tessera.create_model(name)", DeprecationWarning, 2)
    return create_model(name, **overrides)
