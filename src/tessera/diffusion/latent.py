"""Latent diffusion (Rombach et al. 2022, arXiv:2112.10752; notes 002): DDPM in a tokenizer's latent space.

    z0 = s * E(x)                         perceptual compression (a trained tokenizer, frozen), s = 1 / std(z)
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    L = || eps - eps_theta(z_t, t, tau_theta(y)) ||^2      (tau(y) replaced by the null with prob. p_uncond)
    x = D(z0_sampled / s)                 sampling runs DDPM / DDIM in latent space, then decodes

`LatentDiffusion` holds the four parts (first stage, scale factor, denoiser, schedule) plus
the condition encoder, checks that they fit together when built, and checks every condition
before any compute. The first stage is any `tokenizer`-kind model (`encode(x)` -> latents or
a record with `.latents`; `decode(latents)`), used only through that protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tessera.diffusion.conditioning import ConditionEncoder, build_condition_encoder
from tessera.diffusion.guidance import check_guidance, guided_denoiser
from tessera.diffusion.objectives import Prediction, diffusion_loss, sample_timesteps
from tessera.diffusion.samplers import DDIMSampler, DDPMSampler
from tessera.diffusion.schedule import NoiseSchedule

__all__ = ["LatentDiffusion", "first_stage_latents"]

SPEC_NAME = "ldm.json"


def first_stage_latents(out: Any) -> Tensor:
    """The float latents of a tokenizer's `encode` output: the tensor itself or its `.latents`."""
    z = out if isinstance(out, Tensor) else getattr(out, "latents", None)
    if not isinstance(z, Tensor) or z.ndim != 4 or not z.is_floating_point():
        raise ValueError(
            f"the first stage's encode() must give float latents (B, D, h, w) or a record with .latents; "
            f"got {type(out).__name__}"
        )
    return z


class LatentDiffusion(nn.Module):
    """First stage (frozen) + scale factor + conditional UNet + condition encoder + schedule.

    Args:
        first_stage: a trained tokenizer (`encode`, `decode`, `input_size`); frozen here.
        unet: eps_theta(z_t, t, context), e.g. `create_model("ldm_unet_digits")`; its `in_chans`
            must equal the first stage's latent channels and its `context_dim` the encoder's.
        cond_encoder: tau_theta (`ClassEmbedder` or `TextEncoder`).
        schedule: the forward process.
        scale_factor: s; None takes the first stage's `scaling_factor` if it has one other
            than 1, else 1 until `estimate_scale_factor` (LDM appendix D.1).
        p_uncond: probability of training with the null condition (classifier-free guidance).
        prediction: the network's target ("eps" as in the notes, "x0" or "v").
    """

    def __init__(
        self,
        first_stage: nn.Module,
        unet: nn.Module,
        cond_encoder: ConditionEncoder,
        schedule: NoiseSchedule,
        scale_factor: float | None = None,
        p_uncond: float = 0.1,
        prediction: Prediction = "eps",
    ) -> None:
        super().__init__()
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.unet, self.cond_encoder, self.schedule = unet, cond_encoder, schedule
        self.p_uncond, self.prediction = p_uncond, prediction
        # the latent shape, from one encode of a blank image (the tokenizer protocol has no field for it)
        with torch.no_grad():
            probe = first_stage_latents(first_stage.encode(torch.zeros(1, *first_stage.input_size)))
        self.latent_shape: tuple[int, int, int] = tuple(probe.shape[1:])  # type: ignore[assignment]
        ucfg = unet.config
        if self.latent_shape[0] != ucfg.in_chans:
            raise ValueError(
                f"the first stage gives {self.latent_shape[0]}-channel latents but the UNet reads "
                f"in_chans={ucfg.in_chans}; build the UNet with in_chans={self.latent_shape[0]}"
            )
        f = ucfg.downsample_factor
        if self.latent_shape[1] % f or self.latent_shape[2] % f:
            raise ValueError(f"latents of {self.latent_shape[1]}x{self.latent_shape[2]} are not divisible by the UNet's factor {f}")
        if cond_encoder.context_dim != ucfg.context_dim:
            raise ValueError(
                f"the condition encoder gives d_r={cond_encoder.context_dim} but the UNet's cross-attention "
                f"expects context_dim={ucfg.context_dim}"
            )
        if scale_factor is None:
            own = getattr(first_stage, "scaling_factor", None)
            scale_factor = float(own) if own is not None else 1.0
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode everywhere but the frozen first stage."""
        super().train(mode)
        self.first_stage.eval()
        return self

    # ------------------------------------------------------------------ first stage
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """z0 = s E(x): images (B, C, H, W) -> scaled latents (B, D, h, w)."""
        return self.scale_factor * first_stage_latents(self.first_stage.encode(x))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """x = D(z / s): scaled latents (B, D, h, w) -> images (B, C, H, W)."""
        return self.first_stage.decode(z / self.scale_factor)

    @torch.no_grad()
    def estimate_scale_factor(self, x: Tensor) -> float:
        """Set s = 1 / std of the first stage's latents of the batch x; returns it."""
        z = first_stage_latents(self.first_stage.encode(x))
        self.scale_factor.fill_(1.0 / z.float().std().clamp_min(1e-8).item())
        return float(self.scale_factor)

    # ------------------------------------------------------------------ conditions
    def context(self, y: Tensor) -> Tensor:
        """tau_theta(y): (B, M, d_r); the encoder checks y first."""
        return self.cond_encoder(y)

    def drop_condition(self, context: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Replace each row's context by the null one with probability p_uncond (CFG training)."""
        if self.p_uncond == 0:
            return context
        B = context.shape[0]
        drop = torch.rand(B, generator=generator).to(context.device) < self.p_uncond
        return torch.where(drop[:, None, None], self.cond_encoder.null(B).to(context.dtype), context)

    def check_latents(self, z0: Tensor) -> None:
        """ValueError unless z0 is (B, D, h, w) with the first stage's D."""
        if z0.ndim != 4 or tuple(z0.shape[1:2]) != self.latent_shape[:1]:
            raise ValueError(
                f"expected latents (B, {self.latent_shape[0]}, h, w) of the first stage, got {tuple(z0.shape)}"
            )

    # ------------------------------------------------------------------ training
    def loss(self, z0: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """L = || eps - eps_theta(z_t, t, tau(y) or null) ||^2 on scaled latents z0 (B, D, h, w)."""
        self.check_latents(z0)
        self.cond_encoder.check(y)
        B = z0.shape[0]
        t = sample_timesteps(B, self.schedule.T, generator=generator, device=z0.device)     # t ~ U{0..T-1}
        eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)      # eps ~ N(0, I)
        zt = self.schedule.add_noise(z0, eps, t)                                            # z_t
        context = self.drop_condition(self.context(y), generator)                          # tau(y), or null w.p. p_uncond
        out = self.unet(zt, t, context)                                                     # eps_theta(z_t, t, tau(y))
        return diffusion_loss(out, z0, eps, t, self.schedule, self.prediction)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        y: Tensor,
        guidance: float = 1.0,
        sampler: Literal["ddim", "ddpm"] | DDIMSampler | DDPMSampler = "ddim",
        steps: int = 50,
        generator: torch.Generator | None = None,
        decode: bool = True,
    ) -> Tensor:
        """Images (or scaled latents) for the conditions y, with classifier-free guidance s.

        Args:
            y: (B,) class ids or (B, L) token rows, as the condition encoder takes.
            guidance: s >= 0 (0: unconditional, 1: conditional, > 1: guided).
            sampler: "ddim" (eta 0, `steps` steps), "ddpm" (all T), or a sampler object.
            generator: seeds z_T and every z.
            decode: return D(z0 / s) (B, C, H, W); False returns z0 (B, D, h, w).
        """
        s = check_guidance(guidance)  # every check before any compute
        self.cond_encoder.check(y)
        if isinstance(sampler, str):
            if sampler == "ddim":
                sampler = DDIMSampler(self.schedule, steps=steps, prediction=self.prediction)
            elif sampler == "ddpm":
                sampler = DDPMSampler(self.schedule, prediction=self.prediction)
            else:
                raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        B = y.shape[0]
        device = self.scale_factor.device
        context = self.context(y.to(device))
        eps = guided_denoiser(self.unet, context, self.cond_encoder.null(B).to(context.dtype), s)
        was_training = self.training
        self.eval()
        try:
            z0 = sampler.sample(eps, (B, *self.latent_shape), generator=generator, device=device)
        finally:
            self.train(was_training)
        return self.decode(z0) if decode else z0

    # ------------------------------------------------------------------ folders
    def save_pretrained(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """RUN/unet/, RUN/first_stage/ (tessera folders), RUN/cond_encoder.safetensors, RUN/ldm.json."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.first_stage.save_pretrained(folder / "first_stage")
        tmp = folder / "cond_encoder.safetensors.tmp"
        save_model(self.cond_encoder, str(tmp))
        tmp.replace(folder / "cond_encoder.safetensors")
        s = self.schedule
        spec = {
            "cond_encoder": self.cond_encoder.spec(),
            "scale_factor": float(self.scale_factor),
            "p_uncond": self.p_uncond,
            "prediction": self.prediction,
            "schedule": {"beta": s.beta.tolist()},
            "latent_shape": list(self.latent_shape),
            **(extra or {}),
        }
        (folder / SPEC_NAME).write_text(json.dumps(spec))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> tuple[LatentDiffusion, dict[str, Any]]:
        """Rebuild a saved LatentDiffusion (eval mode) and its ldm.json spec."""
        from safetensors.torch import load_model

        from tessera.core.registry import create_model
        from tessera.io.checkpoint import read_tessera_config

        folder = Path(folder)
        spec_file = folder / SPEC_NAME
        if not spec_file.is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} is not a latent diffusion folder: {SPEC_NAME} is missing "
                "(written by `tessera fit` with tessera.train.latent_diffusion.LatentDiffusionTask)"
            )
        spec = json.loads(spec_file.read_text())
        parts = {}
        for part in ("unet", "first_stage"):
            meta = read_tessera_config(folder / part)
            if meta is None:
                raise FileNotFoundError(f"{str(folder / part)!r} holds no tessera model (config.json + model.safetensors)")
            parts[part] = create_model(meta["architecture"], checkpoint=folder / part)
        enc = build_condition_encoder(spec["cond_encoder"])
        load_model(enc, str(folder / "cond_encoder.safetensors"))
        schedule = NoiseSchedule(torch.tensor(spec["schedule"]["beta"], dtype=torch.float32))
        ldm = cls(parts["first_stage"], parts["unet"], enc, schedule, spec["scale_factor"], spec["p_uncond"], spec["prediction"])
        return ldm.eval(), spec
