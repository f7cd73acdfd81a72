"""VQ-GAN (Esser, Rombach, Ommer 2021, "Taming Transformers", arXiv 2012.09841).

Notes 003, "VQ-GAN": the generator is a VQ-VAE; a PatchGAN discriminator (Isola et al. 2017)
judges overlapping patches of the reconstruction, and a perceptual loss keeps it
semantically close: "sharper images (VQ-VAE's output is often blurry)". Generator loss
(paper eq. 5-7, taming's VQLPIPSWithDiscriminator):

    L_nll = |x - x_hat|_1 + w_p d(x, x_hat)                    (d: LPIPS or classifier features)
    L_GAN = -mean D(x_hat)                                      (hinge, generator side)
    lambda = ||grad_{G_L} L_nll|| / (||grad_{G_L} L_GAN|| + 1e-4), clamped to [0, 1e4]
    L_G = L_nll + disc_weight * lambda * L_GAN + L_vq           (GAN term off before disc_start)

G_L is the decoder's last layer. Discriminator (hinge):
    L_D = 1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.core.base import replace_config
from tessera.core.registry import register_model
from tessera.tokenizers.autoencoder import TokenizerOutput
from tessera.tokenizers.vqvae import _TINY, VQVAE, VQConfig

__all__ = ["DiscriminatorOutput", "NLayerDiscriminator", "VQGAN", "VQGANConfig", "adaptive_weight", "hinge_d_loss"]


@dataclass(frozen=True)
class VQGANConfig(VQConfig):
    """VQ-VAE config + the adversarial part. Defaults: LDM's vq-f4 (K = 8192, D = 3, L1 + perceptual,
    disc_weight 0.75, disc_start 0).

    disc_layers / disc_channels: PatchGAN depth and base width (taming: 3, 64).
    disc_start: generator steps before the GAN terms switch on.
    disc_warmup: steps the discriminator trains alone before disc_start. An untrained
        discriminator's gradient is tiny, so the adaptive weight (their norm ratio) scales noise up
        to the size of the reconstruction gradient; a warmed-up one gives the generator a signal.
    disc_norm: "batch" (taming's BatchNorm, so its checkpoints load) or "none". BatchNorm over a batch
        of reconstructions alone rescales their activations to the real batch's, which hides exactly
        what tells a blurry reconstruction from a real image (less high-frequency energy); with short
        training on small images the discriminator then never separates them (hinge loss stays 1).
    """

    latent_channels: int = 3
    num_codes: int = 8192
    embed_dim: int = 3
    rec_loss: Literal["mse", "l1"] = "l1"
    perceptual_weight: float = 1.0
    disc_layers: int = 3
    disc_channels: int = 64
    disc_norm: Literal["batch", "none"] = "batch"
    disc_start: int = 0
    disc_warmup: int = 0
    disc_weight: float = 0.75
    codebook_weight: float = 1.0


@dataclass
class DiscriminatorOutput:
    loss: Tensor  # hinge loss (0 before disc_start)
    logits_real: Tensor  # mean D(x)
    logits_fake: Tensor  # mean D(x_hat)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs (BatchNorm, LeakyReLU 0.2) -> one logit per overlapping patch.

    Layer indices in `main` are taming's (`loss.discriminator.main.{i}`), so its weights load by name.
    """

    def __init__(self, in_chans: int = 3, channels: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"disc_norm must be 'batch' or 'none', got {norm!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_chans, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=norm == "none"),
                nn.BatchNorm2d(channels * mult) if norm == "batch" else nn.Identity(),  # same indices either way
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        # taming's weights_init: conv ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> patch logits (B, 1, H', W')."""
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """lambda = ||grad_{G_L} L_nll|| / (||grad_{G_L} L_GAN|| + 1e-4), clamped to [0, 1e4], detached.

    Balances the two gradients at the decoder's last layer, so that neither drowns the other
    whatever their scales. Needs autograd: returns 0 when gradients are off (validation).
    """
    if not (torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad):
        return nll.new_zeros(())
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VQGAN(VQVAE):
    """VQ-VAE generator + PatchGAN `discriminator`; `forward` gives L_G, `discriminator_loss` L_D."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        self.discriminator = NLayerDiscriminator(config.in_chans, config.disc_channels, config.disc_layers, config.disc_norm)

    def gan_active(self, global_step: int | None) -> bool:
        """Whether the GAN terms are on at this generator step (None: always, e.g. evaluation)."""
        return global_step is None or global_step >= self.config.disc_start

    def disc_active(self, global_step: int | None) -> bool:
        """Whether the discriminator trains at this step: from disc_start - disc_warmup."""
        return global_step is None or global_step >= self.config.disc_start - self.config.disc_warmup

    def forward(
        self, x: Tensor, perceptual: nn.Module | None = None, global_step: int | None = None
    ) -> TokenizerOutput:
        """Reconstruction and the generator loss L_G (module docstring)."""
        c = self.config
        xp, size = self._prepare(x)
        q = self.quantize(self.quant_conv(self._encoder(xp)))
        rec = self._crop(self.decoder(self.post_quant_conv(q.z_q)), size)
        rec_loss = self._rec_loss(x, rec)
        p_loss = self._perceptual(x, rec, perceptual)
        nll = rec_loss + (c.perceptual_weight * p_loss if p_loss is not None else 0.0)
        if self.gan_active(global_step):
            g_loss = -self.discriminator(rec).mean()
            d_weight = c.disc_weight * adaptive_weight(nll, g_loss, self.last_layer)
        else:
            g_loss = d_weight = rec_loss.new_zeros(())
        loss = nll + d_weight * g_loss + c.codebook_weight * q.loss
        return TokenizerOutput(
            reconstruction=rec, loss=loss, rec_loss=rec_loss, quant_loss=q.loss, perceptual_loss=p_loss,
            g_loss=g_loss, d_weight=d_weight, codes=q.indices, perplexity=q.perplexity, usage=q.usage,
        )

    def discriminator_loss(self, x: Tensor, reconstruction: Tensor, global_step: int | None = None) -> DiscriminatorOutput:
        """Hinge loss of the discriminator on real x and (detached) reconstructions."""
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        factor = 1.0 if self.disc_active(global_step) else 0.0
        return DiscriminatorOutput(
            loss=factor * hinge_d_loss(logits_real, logits_fake),
            logits_real=logits_real.detach().mean(),
            logits_fake=logits_fake.detach().mean(),
        )


_TINY_GAN = dict(_TINY, disc_layers=2, disc_channels=8)


@register_model("vqgan_f4", kind="tokenizer", tiny=_TINY_GAN)
def vqgan_f4(**kw) -> VQGAN:
    """VQ-GAN f = 4 with LDM's vq-f4 sizes (ch 128, mult 1-2-4, 2 resblocks, z 3, K 8192)."""
    return VQGAN(replace_config(VQGANConfig(), **kw))
