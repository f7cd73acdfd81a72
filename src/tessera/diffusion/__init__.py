"""Diffusion: noise schedules, samplers (no weights), the UNet denoiser and its objective.

    from tessera.diffusion import NoiseSchedule, DDPMSampler, DDIMSampler, create_unet
    schedule = NoiseSchedule.linear()                      # beta 1e-4 -> 0.02, T = 1000
    xt = schedule.add_noise(x0, eps, t)                    # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    x = DDIMSampler(schedule, steps=50).sample(unet, (16, 3, 32, 32), generator=g)
"""

from tessera.diffusion import convert  # noqa: F401  (registers the "unet" checkpoint converter)
from tessera.diffusion import ldm_convert  # noqa: F401  (registers the "ldm_unet" checkpoint converter)
from tessera.diffusion.conditioning import ClassEmbedder, TextEncoder, TextEncoderConfig
from tessera.diffusion.guidance import guided_denoiser
from tessera.diffusion.latent import LatentDiffusion
from tessera.diffusion.ldm_unet import LDMUNet, LDMUNetConfig
from tessera.diffusion.objectives import (
    diffusion_loss,
    min_snr_weights,
    sample_timesteps,
    split_prediction,
    training_target,
)
from tessera.diffusion.samplers import DDIMSampler, DDPMSampler, NonFiniteSampleError, ddim_timesteps
from tessera.diffusion.schedule import NoiseSchedule
from tessera.diffusion.unet import UNet, UNetConfig, create_unet, list_unets, unet_ddpm_cifar10, unet_digits

__all__ = [
    "ClassEmbedder",
    "LDMUNet",
    "LatentDiffusion",
    "TextEncoder",
    "TextEncoderConfig",
    "guided_denoiser",
    "LDMUNetConfig",
    "DDIMSampler",
    "DDPMSampler",
    "NoiseSchedule",
    "NonFiniteSampleError",
    "UNet",
    "UNetConfig",
    "create_unet",
    "ddim_timesteps",
    "diffusion_loss",
    "list_unets",
    "min_snr_weights",
    "sample_timesteps",
    "split_prediction",
    "training_target",
    "unet_ddpm_cifar10",
    "unet_digits",
]
