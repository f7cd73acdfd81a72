"""Image tokenizers: VQ-VAE, dVAE, VQ-GAN and the KL autoencoder (notes 002 and 003).

    from tessera import create_model
    vq = create_model("vqvae_f4")              # 32 px -> 8x8 codes of a 512-code book
    enc = vq.encode(x)                         # Encoding(latents, codes, pre_quant)
    x_hat = vq.decode(enc.codes)               # codes (B, h, w) or latents (B, D, h, w)
    out = vq(x)                                # TokenizerOutput(reconstruction, loss, rec_loss, ...)
    kl = create_model("autoencoder_kl_f4")
    z = kl.encode(x).latents * kl.scaling_factor   # what latent diffusion trains on
"""

from tessera.tokenizers import convert  # noqa: F401  (registers the "tokenizer" checkpoint converter)
from tessera.tokenizers.autoencoder import AutoencoderConfig, Encoding, Tokenizer, TokenizerOutput
from tessera.tokenizers.kl import AutoencoderKL, KLConfig, kl_to_standard_normal
from tessera.tokenizers.vqgan import VQGAN, DiscriminatorOutput, NLayerDiscriminator, VQGANConfig
from tessera.tokenizers.vqvae import DVAE, VQVAE, DVAEConfig, VQConfig

__all__ = [
    "DVAE",
    "VQGAN",
    "VQVAE",
    "AutoencoderConfig",
    "AutoencoderKL",
    "DVAEConfig",
    "DiscriminatorOutput",
    "Encoding",
    "KLConfig",
    "NLayerDiscriminator",
    "Tokenizer",
    "TokenizerOutput",
    "VQConfig",
    "VQGANConfig",
    "kl_to_standard_normal",
]
