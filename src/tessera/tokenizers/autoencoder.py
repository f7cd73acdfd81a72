"""The convolutional encoder / decoder every image tokenizer shares, and their common base.

Notes 003 ("Large World Models": step 1, "train a tokenizer (Encoder-Decoder model)") and
note 002 (latent diffusion's "perceptual compression"). The network is the one of
taming-transformers (Esser et al. 2021, arXiv 2012.09841) and latent diffusion (Rombach et
al. 2022, arXiv 2112.10752), which diffusers' `VQModel` / `AutoencoderKL` copy: residual
blocks (GroupNorm, SiLU, 3x3 conv, twice), a stride-2 convolution between levels (so the
downsampling factor is f = 2^(levels - 1)), and a middle of resblock - self-attention -
resblock at the lowest resolution. Module names follow taming's (`down.i.block.j`,
`mid.attn_1`, `nin_shortcut`), so its checkpoints load by name; diffusers' are renamed
in `tessera.tokenizers.convert`.

The models (VQ-VAE, dVAE, VQ-GAN, KL autoencoder) share `Tokenizer`: input checks, `encode`
-> `Encoding`, `decode`, `scaling_factor`, and the reconstruction / perceptual losses.
Shapes: maps are (B, C, H, W) throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.core.base import TesseraModel
from tessera.layers import check_image_batch, checkpointed

__all__ = [
    "AttnBlock",
    "AutoencoderConfig",
    "Decoder",
    "Encoder",
    "Encoding",
    "ResnetBlock",
    "Tokenizer",
    "TokenizerOutput",
]


# ------------------------------------------------------------------ config and records


@dataclass(frozen=True)
class AutoencoderConfig:
    """Encoder / decoder sizes and the reconstruction loss shared by every tokenizer.

    channels: width of each level (len = levels; f = 2^(levels - 1)); LDM's f4: (128, 256, 512).
    layers_per_block: resblocks per encoder level (the decoder has one more, as in taming).
    mid_attention: self-attention between the two middle resblocks (lowest resolution).
    latent_channels: channels of the encoder output / decoder input (taming's z_channels).
    rec_loss: pixel loss, "mse" (VQ-VAE) or "l1" (VQ-GAN, LDM).
    perceptual_weight: weight of the perceptual distance passed to forward (0: none).
    pad_input: pad an input whose size is not a multiple of f (and crop the output)
        instead of raising.
    """

    in_chans: int = 3
    img_size: int = 32
    channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    mid_attention: bool = True
    norm_groups: int = 32
    latent_channels: int = 3
    dropout: float = 0.0
    rec_loss: Literal["mse", "l1"] = "mse"
    perceptual_weight: float = 0.0
    pad_input: bool = False

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels must name at least one level, got ()")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"every level width must be divisible by norm_groups={self.norm_groups}, found {bad}")
        if self.rec_loss not in ("mse", "l1"):
            raise ValueError(f"rec_loss must be 'mse' or 'l1', got {self.rec_loss!r}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        f = 2 ** (len(self.channels) - 1)
        if self.img_size % f and not self.pad_input:
            raise ValueError(f"img_size={self.img_size} is not divisible by the downsampling factor f={f}")


@dataclass
class Encoding:
    """What `encode` returns; `decode` takes it back (or its `latents`, or its `codes`).

    latents: (B, D, H/f, W/f) what the decoder reads: quantised vectors (VQ, dVAE), the
        posterior mode or a sample (KL). Multiply by `model.scaling_factor` for latent diffusion.
    codes: (B, H/f, W/f) int64 code indices (VQ, dVAE), else None.
    pre_quant: (B, D, H/f, W/f) the continuous encoder output before quantisation (VQ), else None.
    mean / logvar: (B, D, H/f, W/f) the Gaussian posterior (KL), else None.
    """

    latents: Tensor
    codes: Tensor | None = None
    pre_quant: Tensor | None = None
    mean: Tensor | None = None
    logvar: Tensor | None = None


@dataclass
class TokenizerOutput:
    """`forward` record: the reconstruction, the total loss and its terms (scalars)."""

    reconstruction: Tensor
    loss: Tensor
    rec_loss: Tensor
    quant_loss: Tensor  # VQ: codebook + commitment; dVAE: weighted KL to the prior; KL-AE: weighted KL
    perceptual_loss: Tensor | None = None
    g_loss: Tensor | None = None  # VQ-GAN: -mean D(x_hat)
    d_weight: Tensor | None = None  # VQ-GAN: adaptive weight lambda (times disc_weight)
    codes: Tensor | None = None
    perplexity: Tensor | None = None
    usage: Tensor | None = None
    kl: Tensor | None = None  # KL-AE: KL(q(z|x) || N(0, I)) summed over latents, mean over images


# ------------------------------------------------------------------ blocks


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """h = conv2(drop(SiLU(GN(conv1(SiLU(GN(x))))))); out = skip(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: x + proj(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        # 1x1 convolutions, as in taming (diffusers stores the same matrices as Linear layers)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (rearrange(m(h), "b c h w -> b 1 (h w) c") for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.proj_out(rearrange(a, "b 1 (h w) c -> b c h w", h=H, w=W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right/bottom by one (taming's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: resblocks, then a resampling (an Identity without weights on the last level)."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        setattr(self, name, resample if resample is not None else nn.Identity())


class _Mid(nn.Module):
    def __init__(self, ch: int, groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups, dropout)
        self.attn_1 = AttnBlock(ch, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch, groups, dropout)


class Encoder(nn.Module):
    """x (B, C_in, H, W) -> (B, out_ch, H/f, W/f); f = 2^(len(channels) - 1)."""

    def __init__(
        self,
        in_ch: int,
        channels: tuple[int, ...],
        layers_per_block: int,
        out_ch: int,
        groups: int,
        dropout: float = 0.0,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.conv_in = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = channels[0]
        for i, width in enumerate(channels):
            blocks = []
            for _ in range(layers_per_block):
                blocks.append(ResnetBlock(ch, width, groups, dropout))
                ch = width
            last = i == len(channels) - 1
            self.down.append(_Level(blocks, None if last else Downsample(ch), "downsample"))
        self.mid = _Mid(ch, groups, dropout, mid_attention)
        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = checkpointed(block, h, enabled=self.grad_checkpointing)
            h = level.downsample(h)
        h = checkpointed(self.mid.block_1, h, enabled=self.grad_checkpointing)
        h = self.mid.attn_1(h)
        h = checkpointed(self.mid.block_2, h, enabled=self.grad_checkpointing)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, in_ch, h, w) -> (B, C_out, h f, w f); `up[i]` is level i (0: full resolution), run last to first."""

    def __init__(
        self,
        in_ch: int,
        channels: tuple[int, ...],
        layers_per_block: int,
        out_ch: int,
        groups: int,
        dropout: float = 0.0,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        ch = channels[-1]
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.mid = _Mid(ch, groups, dropout, mid_attention)
        levels: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            blocks = []
            for _ in range(layers_per_block + 1):
                blocks.append(ResnetBlock(ch, channels[i], groups, dropout))
                ch = channels[i]
            levels.insert(0, _Level(blocks, Upsample(ch) if i > 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = checkpointed(self.mid.block_1, h, enabled=self.grad_checkpointing)
        h = self.mid.attn_1(h)
        h = checkpointed(self.mid.block_2, h, enabled=self.grad_checkpointing)
        for level in reversed(self.up):
            for block in level.block:
                h = checkpointed(block, h, enabled=self.grad_checkpointing)
            h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------ the shared model base


class Tokenizer(TesseraModel):
    """Encoder -> (quantiser / posterior) -> decoder; subclasses define the middle and the losses.

    `scaling_factor` (a saved buffer, 1 until `estimate_scaling_factor` is called) is the
    factor latent diffusion multiplies the latents by so that they have unit variance
    (LDM section 4.3.2 / appendix D.1: 1 / std of a batch of latents).
    """

    family: ClassVar[str] = "tokenizer"
    head_keys: ClassVar[tuple[str, ...]] = ()
    encoder_out_channels: ClassVar[int] = 1  # x latent_channels (2 for the KL posterior)

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.grad_checkpointing = False
        self.encoder = Encoder(
            c.in_chans, c.channels, c.layers_per_block, self.encoder_out_channels * c.latent_channels,
            c.norm_groups, c.dropout, c.mid_attention,
        )
        self.decoder = Decoder(
            c.latent_channels, c.channels, c.layers_per_block, c.in_chans, c.norm_groups, c.dropout, c.mid_attention
        )
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    # ---------------------------------------------------------------- protocol helpers

    @property
    def downsample_factor(self) -> int:
        """f: the encoder divides H and W by this."""
        return 2 ** (len(self.config.channels) - 1)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (VQ-GAN's adaptive weight compares gradients here)."""
        return self.decoder.conv_out.weight

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.encoder.grad_checkpointing = enable
        self.decoder.grad_checkpointing = enable

    def _prepare(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Check x; pad it to a multiple of f when `pad_input`, else refuse other sizes."""
        check_image_batch(x, self.config.in_chans)
        H, W = x.shape[-2:]
        f = self.downsample_factor
        if H % f or W % f:
            if not self.config.pad_input:
                raise ValueError(
                    f"input size {H}x{W} is not divisible by the downsampling factor f={f}; "
                    f"crop or pad it to a multiple of {f}, or build the model with pad_input=True"
                )
            x = F.pad(x, (0, -W % f, 0, -H % f), mode="replicate")
        return x, (H, W)

    def _encoder(self, x: Tensor) -> Tensor:
        h = self.encoder(x)
        if not torch.isfinite(h).all():
            bad = (~torch.isfinite(h)).sum().item()
            raise FloatingPointError(
                f"{type(self).__name__} encoder output has {bad} non-finite values (NaN/inf) of {h.numel()}; "
                "check the input and the learning rate"
            )
        return h

    def _rec_loss(self, x: Tensor, rec: Tensor) -> Tensor:
        return F.mse_loss(rec, x) if self.config.rec_loss == "mse" else F.l1_loss(rec, x)

    def _perceptual(self, x: Tensor, rec: Tensor, perceptual: nn.Module | None) -> Tensor | None:
        """Mean perceptual distance d(x, x_hat) from the network the training task passes in."""
        if perceptual is None or self.config.perceptual_weight == 0:
            return None
        return perceptual(x, rec).mean()

    @torch.no_grad()
    def estimate_scaling_factor(self, x: Tensor) -> float:
        """Set `scaling_factor` = 1 / std of the latents of the batch x (LDM appendix D.1); returns it."""
        z = self.encode(x).latents
        value = 1.0 / z.float().std().clamp_min(1e-8).item()
        self.scaling_factor.fill_(value)
        return value

    def decode(self, z: Encoding | Tensor) -> Tensor:
        """Latents (B, D, h, w), integer codes (B, h, w) or an `Encoding` -> images (B, C, H, W)."""
        if isinstance(z, Encoding):
            z = z.latents
        if not z.is_floating_point():
            z = self.lookup(z)
        if z.ndim != 4:
            raise ValueError(f"decode expects latents (B, D, h, w) or codes (B, h, w), got shape {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def lookup(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> latents (B, D, h, w); only discrete tokenizers have codes."""
        raise ValueError(f"{type(self).__name__} has continuous latents, not codes; pass float latents to decode")

    @staticmethod
    def _crop(rec: Tensor, size: tuple[int, int]) -> Tensor:
        return rec[..., : size[0], : size[1]]

    def compressed_bits(self) -> float:
        """Bits per image of the code grid (discrete tokenizers): h * w * log2 K."""
        K = getattr(self.config, "num_codes", 0)
        h, w = (s // self.downsample_factor for s in self.input_size[1:])
        return h * w * math.log2(K) if K else float("nan")
