"""Training objectives of DDPM (notes: "we eventually have a loss to minimize").

    L_simple = E_{t, x0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

with t uniform over [0, T) and the ELBO's per-t weighting dropped (Ho et al.,
arXiv:2006.11239, eq. 14). The network may instead predict x0, or
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho,
arXiv:2202.00512); `split_prediction` turns any of the three back into (x0, eps).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tessera.diffusion.schedule import NoiseSchedule

__all__ = [
    "Prediction",
    "diffusion_loss",
    "min_snr_weights",
    "sample_timesteps",
    "split_prediction",
    "training_target",
]

Prediction = Literal["eps", "x0", "v"]
_PREDICTIONS = ("eps", "x0", "v")


def _check_prediction(prediction: str) -> None:
    if prediction not in _PREDICTIONS:
        raise ValueError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")


def sample_timesteps(
    batch: int, T: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """t ~ Uniform{0, ..., T-1}, one per sample: (B,) int64."""
    return torch.randint(0, T, (batch,), generator=generator).to(device)


def training_target(
    schedule: NoiseSchedule, prediction: Prediction, x0: Tensor, eps: Tensor, t: Tensor
) -> Tensor:
    """What the network should output at (x_t, t): eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return schedule.velocity(x0, eps, t)


def split_prediction(
    model_output: Tensor, xt: Tensor, alpha_bar: Tensor, prediction: Prediction
) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by the network output at x_t, given alpha_bar_t (broadcastable to xt)."""
    _check_prediction(prediction)
    if prediction == "eps":
        eps = model_output
        x0 = (xt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()          # DDPM eq. 15 solved for x0
    elif prediction == "x0":
        x0 = model_output
        eps = (xt - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()          # closed form solved for eps
    else:
        v = model_output
        x0 = alpha_bar.sqrt() * xt - (1 - alpha_bar).sqrt() * v              # x0 = sqrt(abar) xt - sqrt(1-abar) v
        eps = alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * xt             # eps = sqrt(abar) v + sqrt(1-abar) xt
    return x0, eps


def min_snr_weights(schedule: NoiseSchedule, gamma: float = 5.0, prediction: Prediction = "eps") -> Tensor:
    """Per-t weights of Min-SNR-gamma (Hang et al., arXiv:2303.09556), shape (T,).

    For eps-prediction: min(SNR_t, gamma) / SNR_t; for x0: min(SNR_t, gamma);
    for v: min(SNR_t, gamma) / (SNR_t + 1).
    """
    _check_prediction(prediction)
    snr = schedule.alpha_bar / (1 - schedule.alpha_bar)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1)


def diffusion_loss(
    model_output: Tensor,
    x0: Tensor,
    eps: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: Prediction = "eps",
    weights: Tensor | None = None,
) -> Tensor:
    """Mean over the batch of w_t || target - f_theta(x_t, t) ||^2 (per-pixel mean).

    Args:
        model_output: (B, C, H, W), the network's output at (x_t, t).
        x0: (B, C, H, W) clean samples; eps: the noise used to make x_t.
        t: (B,) timesteps.
        prediction: what the network predicts; "eps" is the notes' L_simple.
        weights: optional (T,) per-t weights w_t (e.g. `min_snr_weights`); None means w_t = 1.
    """
    target = training_target(schedule, prediction, x0, eps, t)
    per_sample = (target - model_output).square().flatten(1).mean(1)     # || target - f_theta(x_t, t) ||^2
    if weights is not None:
        if weights.shape != (schedule.T,):
            raise ValueError(f"weights must have shape (T,) = ({schedule.T},), got {tuple(weights.shape)}")
        w = weights.to(per_sample)
        per_sample = w[schedule.check_timesteps(t).to(w.device)] * per_sample
    return per_sample.mean()
