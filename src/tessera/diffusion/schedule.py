"""The fixed forward process of DDPM (Ho et al. 2020, arXiv:2006.11239; notes: "Forward Noising").

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),   0 < beta_t < 1
    alpha_t = 1 - beta_t,   alpha_bar_t = prod_{s<=t} alpha_s
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)        (closed form)
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t                       (posterior variance)

Timesteps are 0-based, t in [0, T): index t holds the notes' step t + 1, the
convention of diffusers and of the official DDPM code. The schedule holds no
weights and knows nothing about the noise network.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

__all__ = ["NoiseSchedule"]


def _cosine_alpha_bar(s: float) -> float:
    """Nichol & Dhariwal (arXiv:2102.09672) eq. 17 with offset 0.008; s in [0, 1]."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


class NoiseSchedule:
    """beta_1..beta_T and the tables derived from them, computed once in float32.

    Attributes (all (T,) float32):
        beta, alpha, alpha_bar, alpha_bar_prev (alpha_bar_{t-1}, with alpha_bar_{-1} = 1),
        posterior_variance (beta~_t).
    """

    def __init__(self, betas: Tensor | Sequence[float]) -> None:
        beta = torch.as_tensor(betas, dtype=torch.float32).detach().clone().cpu()
        if beta.ndim != 1 or beta.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(beta.shape)}")
        bad = ~(torch.isfinite(beta) & (beta > 0) & (beta < 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"every beta must lie in the open interval (0, 1); beta[{i}] = {beta[i].item()!r} "
                f"({int(bad.sum())} of {beta.numel()} outside)"
            )
        self.T = beta.numel()
        self.beta = beta
        self.alpha = 1.0 - beta                                          # alpha_t = 1 - beta_t
        self.alpha_bar = torch.cumprod(self.alpha, dim=0)                # alpha_bar_t = prod_s alpha_s
        self._check_alpha_bar()
        self.alpha_bar_prev = torch.cat([torch.ones(1), self.alpha_bar[:-1]])  # alpha_bar_{t-1}, 1 at t = 0
        # beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   (DDPM eq. 7); 0 at t = 0.
        # beta_t is read as 1 - alpha_bar_t / alpha_bar_{t-1}: equal up to float32 rounding, and that
        # rounding is the one diffusers' schedulers have, so steps agree within 1e-5 at every t.
        self.posterior_variance = (
            (1 - self.alpha_bar_prev) / (1 - self.alpha_bar) * (1 - self.alpha_bar / self.alpha_bar_prev)
        )

    def _check_alpha_bar(self) -> None:
        """Refuse tables that sampling cannot use: every step divides by sqrt(alpha_bar_t) and by
        sqrt(1 - alpha_bar_t) (x0 from eps, eq. 15), so both must stay above 0 in float32."""
        if bool((self.alpha == 1).any()):
            i = int((self.alpha == 1).nonzero()[0])
            raise ValueError(
                f"beta[{i}] = {self.beta[i].item():.3g} is below float32 resolution: alpha_{i} = 1 - beta_{i} "
                "rounds to 1 and the step at that t would divide by zero; use betas of at least 1e-7"
            )
        zero = self.alpha_bar <= 0
        if bool(zero.any()):
            i = int(zero.nonzero()[0])
            raise ValueError(
                f"alpha_bar underflows to 0 in float32 at t={i} of T={self.T} (smallest non-zero value "
                f"{self.alpha_bar[self.alpha_bar > 0].min().item():.3g}): the first sampling step would divide "
                "by sqrt(alpha_bar_T) = 0. Use fewer steps or smaller betas; a zero terminal SNR needs "
                "v-prediction and a sampler written for it"
            )

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's schedule: beta rises linearly from `beta_start` to `beta_end` over T steps."""
        if T < 1:
            raise ValueError(f"T must be a positive number of steps, got {T}")
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float32))

    @classmethod
    def cosine(cls, T: int = 1000, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule: beta_t = min(1 - abar(t/T) / abar((t-1)/T), 0.999).

        The same table as diffusers' "squaredcos_cap_v2".
        """
        if T < 1:
            raise ValueError(f"T must be a positive number of steps, got {T}")
        betas = [
            min(1 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), max_beta) for i in range(T)
        ]
        return cls(torch.tensor(betas, dtype=torch.float32))

    @classmethod
    def from_name(
        cls, kind: Literal["linear", "cosine"], T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """The schedule a training task or a run's diffusion.json names: "linear" or "cosine"."""
        if kind == "linear":
            return cls.linear(T, beta_start, beta_end)
        if kind == "cosine":
            return cls.cosine(T)
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.T}, beta=[{self.beta[0].item():.3g} .. {self.beta[-1].item():.3g}], "
            f"alpha_bar_T={self.alpha_bar[-1].item():.3g})"
        )

    def check_timesteps(self, t: Tensor | int) -> Tensor:
        """`t` as an int64 tensor after checking that every entry is an integer in [0, T)."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers in [0, {self.T}), got dtype {t.dtype}")
        t = t.long()
        if t.numel() and (t.min() < 0 or t.max() >= self.T):
            bad = t[(t < 0) | (t >= self.T)]
            raise ValueError(
                f"timesteps must lie in [0, T) = [0, {self.T}), got {bad.flatten()[:4].tolist()}"
            )
        return t

    def gather(self, table: Tensor, t: Tensor | int, x: Tensor) -> Tensor:
        """table[t] shaped (B, 1, ..., 1) to broadcast against x (B, ...); t: scalar or (B,)."""
        t = self.check_timesteps(t).to(table.device)
        if t.ndim > 1 or (t.ndim == 1 and t.numel() != 1 and (x.ndim == 0 or t.numel() != x.shape[0])):
            raise ValueError(
                f"timesteps must be one value or one per sample (shape ({x.shape[0] if x.ndim else 1},)); "
                f"got shape {tuple(t.shape)} for a batch of shape {tuple(x.shape)}"
            )
        v = table[t].to(device=x.device, dtype=x.dtype)
        return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for a batch of timesteps.

        Args:
            x0: (B, ...) clean samples.
            noise: eps, same shape as x0.
            t: (B,) integer timesteps in [0, T), or one int for the whole batch.

        Returns:
            xt: (B, ...), the closed form of the forward process.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        alpha_bar = self.gather(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise   # x_t = sqrt(abar) x0 + sqrt(1-abar) eps

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho, arXiv:2202.00512)."""
        alpha_bar = self.gather(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def snr(self, t: Tensor | int) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), for loss weightings."""
        t = self.check_timesteps(t)
        return self.alpha_bar[t] / (1 - self.alpha_bar[t])
