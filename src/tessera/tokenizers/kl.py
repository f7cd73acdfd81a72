"""The KL autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752, section 3 / appendix G).

Note 002, "perceptual compression": an autoencoder whose latent space is perceptually
equivalent to the image space, lightly regularised towards N(0, I) so that it stays
smooth. The encoder gives a diagonal Gaussian posterior q(z | x) = N(mu, diag(sigma^2)):

    (mu, log sigma^2) = quant_conv(E(x))          (log-variance clamped to [-30, 20])
    z = mu + sigma * eps (training)  or  z = mu (mode: inference)
    x_hat = D(post_quant_conv(z))
    L = sum |x - x_hat| (+ w_p d(x, x_hat)) + kl_weight * KL(q || N(0, I)),  kl_weight = 1e-6

Sums run over pixels / latent elements and are averaged over images, as in LDM, which is
why kl_weight is so small. A latent-diffusion model is trained on `scaling_factor * z`,
with scaling_factor = 1 / std of the latents of a batch (`estimate_scaling_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tessera.core.base import replace_config
from tessera.core.registry import register_model
from tessera.tokenizers.autoencoder import AutoencoderConfig, Encoding, Tokenizer, TokenizerOutput

__all__ = ["AutoencoderKL", "KLConfig", "kl_to_standard_normal"]


@dataclass(frozen=True)
class KLConfig(AutoencoderConfig):
    """KL autoencoder; defaults: LDM's kl-f4 (ch 128, mult 1-2-4, 2 resblocks, z 3, L1, kl_weight 1e-6).

    sample_posterior: training forward decodes a sample (True, LDM) or the mean.
    """

    rec_loss: Literal["mse", "l1"] = "l1"
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    sample_posterior: bool = True


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2), per image (B,)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class AutoencoderKL(Tokenizer):
    """Encoder -> Gaussian posterior (mean, log-variance) -> sample or mode -> decoder."""

    encoder_out_channels = 2  # mean and log-variance

    def __init__(self, config: KLConfig) -> None:
        super().__init__(config)
        z = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> mean, log-variance (B, z, H/f, W/f)."""
        x, _ = self._prepare(x)
        mean, logvar = self.quant_conv(self._encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Encoding:
        """Latents: the posterior mode (default, deterministic) or a sample z = mu + sigma eps."""
        mean, logvar = self.posterior(x)
        z = self._sample(mean, logvar, generator) if sample else mean
        return Encoding(latents=z, mean=mean, logvar=logvar)

    @staticmethod
    def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def forward(self, x: Tensor, perceptual: nn.Module | None = None) -> TokenizerOutput:
        """Reconstruction (sampled latent in training when `sample_posterior`, mode in eval) and L."""
        c = self.config
        xp, size = self._prepare(x)
        mean, logvar = self.quant_conv(self._encoder(xp)).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = self._sample(mean, logvar) if (self.training and c.sample_posterior) else mean
        rec = self._crop(self.decoder(self.post_quant_conv(z)), size)
        B = x.shape[0]
        pixel = (rec - x).square() if c.rec_loss == "mse" else (rec - x).abs()
        p_loss = self._perceptual(x, rec, perceptual)
        nll = pixel.sum() / B
        if p_loss is not None:  # LDM adds w_p * LPIPS to every pixel's loss before summing
            nll = nll + c.perceptual_weight * p_loss * pixel[0].numel()
        kl = kl_to_standard_normal(mean, logvar).mean()
        return TokenizerOutput(
            reconstruction=rec, loss=nll + c.kl_weight * kl, rec_loss=pixel.mean(), quant_loss=c.kl_weight * kl,
            perceptual_loss=p_loss, kl=kl,
        )


_TINY = dict(channels=(8, 16), layers_per_block=1, norm_groups=4, latent_channels=4)


@register_model("autoencoder_kl_f4", kind="tokenizer", tiny=_TINY)
def autoencoder_kl_f4(**kw) -> AutoencoderKL:
    """LDM's kl-f4 first stage: f = 4, z = 3 channels."""
    return AutoencoderKL(replace_config(KLConfig(), **kw))


@register_model("autoencoder_kl_f8", kind="tokenizer", tiny=_TINY)
def autoencoder_kl_f8(**kw) -> AutoencoderKL:
    """LDM's kl-f8 / Stable Diffusion's VAE layout: f = 8, z = 4 (ch 128, mult 1-2-4-4)."""
    return AutoencoderKL(replace_config(KLConfig(channels=(128, 256, 512, 512), latent_channels=4), **kw))
