"""VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) and the discrete VAE of DALL-E (arXiv 2102.12092).

Notes 003, "VQ-VAE" and "dVAE". Both put a discrete bottleneck between the shared encoder
and decoder (`tessera.tokenizers.autoencoder`):

    VQ-VAE:  h = quant_conv(E(x));  k = argmin_j ||h - e_j||;  x_hat = D(post_quant_conv(e_k))
             L = rec(x, x_hat) + ||sg[h] - e||^2 + beta ||h - sg[e]||^2
    dVAE:    q(k | x) = softmax(proj(E(x)));  y ~ GumbelSoftmax(q, tau);  x_hat = D(post_quant_conv(sum_k y_k e_k))
             L = rec(x, x_hat) + kl_weight KL(q || uniform)

The quantisers live in `tessera.layers.quantizers` (the VQ options: EMA, k-means init,
dead-code restarts, cosine and factorised codes are config fields here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from tessera.core.base import replace_config
from tessera.core.registry import register_model
from tessera.layers.quantizers import GumbelQuantizer, VectorQuantizer
from tessera.tokenizers.autoencoder import AutoencoderConfig, Encoding, Tokenizer, TokenizerOutput

__all__ = ["DVAE", "DVAEConfig", "VQConfig", "VQVAE"]


@dataclass(frozen=True)
class VQConfig(AutoencoderConfig):
    """VQ-VAE: the autoencoder plus a codebook of `num_codes` vectors of `embed_dim` channels.

    Defaults: the VQ-VAE paper's K = 512, D = 64, beta = 0.25 (paper placement).
    `codebook_dim` > 0 and < embed_dim: factorised lookup in that dimension.
    `restart_after`: steps a code may stay unused before it is re-seeded (0: never).
    """

    latent_channels: int = 64
    num_codes: int = 512
    embed_dim: int = 64
    beta: float = 0.25
    beta_placement: Literal["paper", "legacy"] = "paper"
    ema: bool = False
    ema_decay: float = 0.99
    kmeans_init: bool = False
    restart_after: int = 0
    cosine: bool = False
    codebook_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_codes < 2:
            raise ValueError(f"a codebook needs at least 2 codes, got num_codes={self.num_codes}")
        if self.beta_placement not in ("paper", "legacy"):
            raise ValueError(f"beta_placement must be 'paper' or 'legacy', got {self.beta_placement!r}")


class VQVAE(Tokenizer):
    """Encoder -> 1x1 conv -> nearest code -> 1x1 conv -> decoder."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__(config)
        c = config
        self.quant_conv = nn.Conv2d(c.latent_channels, c.embed_dim, 1)
        self.quantize = VectorQuantizer(
            c.num_codes, c.embed_dim, beta=c.beta, beta_placement=c.beta_placement, ema=c.ema,
            decay=c.ema_decay, kmeans_init=c.kmeans_init, restart_after=c.restart_after,
            cosine=c.cosine, codebook_dim=c.codebook_dim or None,
        )
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)

    def encode(self, x: Tensor) -> Encoding:
        """x (B, C, H, W) -> quantised latents (B, D, H/f, W/f), codes (B, H/f, W/f), pre-quantisation h."""
        x, _ = self._prepare(x)
        h = self.quant_conv(self._encoder(x))
        q = self.quantize(h)
        return Encoding(latents=q.z_q, codes=q.indices, pre_quant=h)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) in [0, K) -> code vectors (B, D, h, w); a ValueError names the range otherwise."""
        return self.quantize.lookup(codes)

    def forward(self, x: Tensor, perceptual: nn.Module | None = None) -> TokenizerOutput:
        """Reconstruction and L = rec + perceptual_weight * d(x, x_hat) + L_vq.

        Args:
            x: (B, C, H, W) images in [-1, 1].
            perceptual: optional network d(x, x_hat) -> (B,) (LPIPS or classifier features),
                owned by the training task so that the tokenizer's checkpoint never holds it.
        """
        xp, size = self._prepare(x)
        q = self.quantize(self.quant_conv(self._encoder(xp)))
        rec = self._crop(self.decoder(self.post_quant_conv(q.z_q)), size)
        rec_loss = self._rec_loss(x, rec)
        p_loss = self._perceptual(x, rec, perceptual)
        loss = rec_loss + q.loss + (self.config.perceptual_weight * p_loss if p_loss is not None else 0.0)
        return TokenizerOutput(
            reconstruction=rec, loss=loss, rec_loss=rec_loss, quant_loss=q.loss, perceptual_loss=p_loss,
            codes=q.indices, perplexity=q.perplexity, usage=q.usage,
        )


@dataclass(frozen=True)
class DVAEConfig(AutoencoderConfig):
    """dVAE: logits over `num_codes` codes of `embed_dim` channels per position.

    kl_weight: weight of KL(q || uniform) (taming's Gumbel VQ: 5e-4).
    temperature: initial Gumbel-softmax tau; the training task anneals it (DALL-E: 1 -> 1/16).
    straight_through: hard one-hot samples in the forward pass (relaxed gradient).
    """

    latent_channels: int = 64
    num_codes: int = 512
    embed_dim: int = 64
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_codes < 2:
            raise ValueError(f"a codebook needs at least 2 codes, got num_codes={self.num_codes}")


class DVAE(Tokenizer):
    """Encoder -> logits over K codes -> Gumbel-softmax (argmax in eval) -> code vectors -> decoder."""

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__(config)
        c = config
        self.quantize = GumbelQuantizer(
            c.num_codes, c.latent_channels, c.embed_dim, kl_weight=c.kl_weight,
            temperature=c.temperature, straight_through=c.straight_through,
        )
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)

    def set_temperature(self, tau: float) -> None:
        """Anneal the Gumbel-softmax temperature (called by the training task)."""
        if tau <= 0:
            raise ValueError(f"temperature must be > 0, got {tau}")
        self.quantize.temperature = float(tau)

    def encode(self, x: Tensor) -> Encoding:
        """x -> argmax codes (B, H/f, W/f) and their vectors (deterministic in eval)."""
        x, _ = self._prepare(x)
        q = self.quantize(self._encoder(x))
        return Encoding(latents=q.z_q, codes=q.indices)

    def lookup(self, codes: Tensor) -> Tensor:
        return self.quantize.lookup(codes)

    def forward(self, x: Tensor, perceptual: nn.Module | None = None) -> TokenizerOutput:
        """Reconstruction and L = rec + kl_weight KL(q || uniform) (+ perceptual)."""
        xp, size = self._prepare(x)
        q = self.quantize(self._encoder(xp))
        rec = self._crop(self.decoder(self.post_quant_conv(q.z_q)), size)
        rec_loss = self._rec_loss(x, rec)
        p_loss = self._perceptual(x, rec, perceptual)
        loss = rec_loss + q.loss + (self.config.perceptual_weight * p_loss if p_loss is not None else 0.0)
        return TokenizerOutput(
            reconstruction=rec, loss=loss, rec_loss=rec_loss, quant_loss=q.loss, perceptual_loss=p_loss,
            codes=q.indices, perplexity=q.perplexity, usage=q.usage,
        )


# ------------------------------------------------------------------ registry

_TINY = dict(channels=(8, 16), layers_per_block=1, norm_groups=4, latent_channels=4, embed_dim=4, num_codes=16)


@register_model("vqvae_f4", kind="tokenizer", tiny=_TINY)
def vqvae_f4(**kw) -> VQVAE:
    """VQ-VAE, f = 4 (32 px -> 8x8 codes), K = 512, D = 64: the paper's codebook on LDM's f4 network."""
    return VQVAE(replace_config(VQConfig(), **kw))


@register_model("vqvae_ema_f4", kind="tokenizer", tiny=_TINY)
def vqvae_ema_f4(**kw) -> VQVAE:
    """VQ-VAE with the collapse remedies: EMA codebook, k-means init, restarts after 100 unused steps."""
    return VQVAE(replace_config(VQConfig(ema=True, kmeans_init=True, restart_after=100), **kw))


@register_model("dvae_f4", kind="tokenizer", tiny=_TINY)
def dvae_f4(**kw) -> DVAE:
    """dVAE (DALL-E's Gumbel-softmax tokenizer), f = 4, K = 512."""
    return DVAE(replace_config(DVAEConfig(), **kw))
