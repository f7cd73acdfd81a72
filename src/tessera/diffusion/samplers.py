"""Reverse-process samplers: ancestral DDPM and DDIM. No weights; they only read a NoiseSchedule.

DDPM (Ho et al. 2020, arXiv:2006.11239, Algorithm 2; notes: "Inference"):
    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
    sigma_t^2 = beta_t ("fixed_large") or beta~_t ("fixed_small").
The step is written through the predicted x0 and the posterior mean mu~_t(x_t, x0)
(DDPM eqs. 7 and 15), which is the same x_{t-1} when x0 is not clipped and lets
the network predict x0 or v instead of eps.

DDIM (Song et al. 2020, arXiv:2010.02502, eqs. 12 and 16) on a sub-grid of timesteps:
    x_{t'} = sqrt(alpha_bar_{t'}) x0 + sqrt(1 - alpha_bar_{t'} - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t'}),
with t' the next timestep of the grid (alpha_bar = 1 after the last one).

Both give the same x_{t-1} as diffusers' DDPMScheduler / DDIMScheduler for the
same inputs and noise (tests compare within 1e-5); one deliberate difference:
diffusers' DDIM always steps to t - T // steps, which leaves the grid for
"linspace" and for "trailing" when steps does not divide T; here a step always
goes to the next timestep of `.timesteps`.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from tessera.diffusion.objectives import Prediction, split_prediction
from tessera.diffusion.schedule import NoiseSchedule

__all__ = ["DDIMSampler", "DDPMSampler", "NonFiniteSampleError", "ddim_timesteps"]

log = logging.getLogger(__name__)

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, H, W), t (B,)) -> eps / x0 / v, (B, C, H, W)
Spacing = Literal["leading", "trailing", "linspace"]


class NonFiniteSampleError(ValueError):
    """A NaN or inf appeared in x_t during sampling; `.step` is the loop index, `.t` the timestep."""

    def __init__(self, step: int, t: int, num_steps: int) -> None:
        super().__init__(
            f"sampling produced NaN/inf at step {step} of {num_steps} (timestep t={t}); "
            "check the model's outputs and the schedule"
        )
        self.step = step
        self.t = t


def ddim_timesteps(T: int, steps: int, spacing: Spacing = "leading") -> Tensor:
    """The DDIM sub-grid of [0, T), descending, as int64 (Lin et al., arXiv:2305.08891, Table 2).

    "leading": 0, k, 2k, ... with k = T // steps (starts at 0; may stop short of T-1);
    "trailing": round(T - i T/steps) - 1 (always includes T-1; may stop short of 0);
    "linspace": round(linspace(0, T-1, steps)) (includes both 0 and T-1).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, T] = [1, {T}], got {steps!r}")
    if spacing == "leading":
        grid = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        # i T / steps for i < steps exactly (np.arange(T, 0, -T / steps) may give steps + 1 values by
        # float rounding, the last one rounding to timestep -1)
        grid = np.round(T - np.arange(steps) * T / steps).astype(np.int64) - 1
    elif spacing == "linspace":
        grid = np.linspace(0, T - 1, steps).round()
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return torch.from_numpy(np.sort(grid.astype(np.int64))[::-1].copy())


def _clip(x0: Tensor, clip_x0: float | bool) -> Tensor:
    """Clamp the predicted x0 to [-c, c] (c = 1 for True); off (False) by default, as in the notes."""
    if clip_x0 is False or clip_x0 is None:
        return x0
    c = 1.0 if clip_x0 is True else float(clip_x0)
    return x0.clamp(-c, c)


Generator = torch.Generator | list[torch.Generator] | None


def randn(
    shape: tuple[int, ...], generator: Generator = None, device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """torch.randn(shape), drawn from one generator or from one generator per sample.

    With a list (one generator per sample, as diffusers accepts), sample i's noise
    depends only on its own generator, so image i is the same in any batch size.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per sample")
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat([p.to(device or "cpu") for p in parts]) if parts else torch.empty(shape, dtype=dtype, device=device)
    gen_device = generator.device if generator is not None else (device or "cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device or gen_device)


def _draw(x_t: Tensor, noise: Tensor | None, generator: Generator) -> Tensor:
    """z ~ N(0, I) shaped like x_t: the given noise, or drawn with `generator` (one, or one per sample)."""
    if noise is not None:
        if noise.shape != x_t.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_t shape {tuple(x_t.shape)}")
        return noise.to(x_t)
    return randn(tuple(x_t.shape), generator, device=x_t.device, dtype=x_t.dtype)


class _Sampler:
    """The loop shared by both samplers: x_T ~ N(0, I), then one `step` per timestep."""

    schedule: NoiseSchedule
    timesteps: Tensor

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        noise: Tensor | None = None,
        generator: Generator = None,
    ) -> Tensor:
        raise NotImplementedError

    def _check_t(self, t: int | Tensor, x_t: Tensor | None = None, model_output: Tensor | None = None) -> int:
        """One timestep for the whole batch: an int, a 0-d tensor, or a (B,) vector of equal values."""
        if model_output is not None and x_t is not None and model_output.shape != x_t.shape:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} differs from x_t shape {tuple(x_t.shape)}"
            )
        t = self.schedule.check_timesteps(t)
        if t.numel() == 1:
            return int(t.reshape(()))
        B = x_t.shape[0] if x_t is not None and x_t.ndim else None
        if t.ndim != 1 or t.numel() != B:
            raise ValueError(
                f"timestep must be one value or a (B,) vector for x_t of shape "
                f"{tuple(x_t.shape) if x_t is not None else '?'}; got shape {tuple(t.shape)}"
            )
        if bool((t != t[0]).any()):
            raise ValueError(
                f"{type(self).__name__}.step moves the whole batch from one timestep; got different "
                f"timesteps per sample {t[:4].tolist()}...; step groups of equal t separately"
            )
        return int(t[0])

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        shape: tuple[int, ...],
        generator: Generator = None,
        device: torch.device | str | None = None,
        x_T: Tensor | None = None,
        callback: Callable[[int, int, Tensor], None] | None = None,
    ) -> Tensor:
        """Run the whole reverse process and return x_0.

        Args:
            model: called as model(x_t, t) with x_t (B, C, H, W) and t (B,) int64; for class
                conditioning pass a closure, e.g. `lambda x, t: unet(x, t, y)`.
            shape: (B, C, H, W) of the samples.
            generator: seeds x_T ~ torch.randn(shape, generator=generator) and every z; a list of
                one generator per sample makes sample i independent of the batch it is drawn in.
            device: where the model runs (default: CPU, or x_T's device).
            x_T: optional starting noise instead of drawing it.
            callback: called as callback(i, t, x_{t-1}) after every step (progress bars).

        Raises:
            NonFiniteSampleError: a NaN or inf appeared; names the step index and timestep.
        """
        if x_T is None:
            x = randn(tuple(shape), generator, device=device or "cpu")
        else:
            if tuple(x_T.shape) != tuple(shape):
                raise ValueError(f"x_T shape {tuple(x_T.shape)} differs from shape {tuple(shape)}")
            x = x_T.to(device) if device is not None else x_T
        n = len(self.timesteps)
        for i, t in enumerate(self.timesteps.tolist()):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x = self.step(model(x, t_batch), t, x, generator=generator)
            if not torch.isfinite(x).all():
                raise NonFiniteSampleError(i, t, n)
            if callback is not None:
                callback(i, t, x)
        return x


class DDPMSampler(_Sampler):
    """Ancestral sampling over all T steps (DDPM Algorithm 2).

    Args:
        schedule: the forward process the model was trained with.
        variance: sigma_t^2 = beta~_t ("fixed_small") or beta_t ("fixed_large", the notes' choice).
        prediction: what the network outputs ("eps" as in the notes, "x0" or "v").
        clip_x0: clamp the predicted x0 to [-1, 1] (True) or [-c, c] (a float); off by default.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        variance: Literal["fixed_small", "fixed_large"] = "fixed_small",
        prediction: Prediction = "eps",
        clip_x0: bool | float = False,
    ) -> None:
        if variance not in ("fixed_small", "fixed_large"):
            raise ValueError(f"variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
        self.schedule = schedule
        self.variance = variance
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.timesteps = torch.arange(schedule.T - 1, -1, -1)  # T-1, ..., 0

    def __repr__(self) -> str:
        return f"DDPMSampler(T={self.schedule.T}, variance={self.variance!r}, prediction={self.prediction!r})"

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        noise: Tensor | None = None,
        generator: Generator = None,
    ) -> Tensor:
        """x_{t-1} from x_t and the network output at t (DDPM Algorithm 2, one iteration).

        Args:
            model_output: (B, C, H, W) eps_theta(x_t, t) (or x0 / v, per `prediction`).
            t: the current timestep, an int in [0, T) (or a (B,) vector of that one value).
            x_t: (B, C, H, W).
            noise: z ~ N(0, I) shaped like x_t; drawn with `generator` when None. No noise is
                drawn at t = 0.

        Returns:
            x_{t-1}: (B, C, H, W).
        """
        t = self._check_t(t, x_t, model_output)
        s = self.schedule
        alpha_bar, alpha_bar_prev = s.alpha_bar[t], s.alpha_bar_prev[t]
        # alpha_t = abar_t / abar_{t-1} = 1 - beta_t; read off alpha_bar (not s.beta) so that the float32
        # rounding is diffusers', and so that the step stays right between non-adjacent timesteps
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha
        x0, _ = split_prediction(model_output, x_t, alpha_bar, self.prediction)  # x0 = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t), eq. 15
        x0 = _clip(x0, self.clip_x0)                                              # optional: x0 in [-1, 1]
        mean = (
            alpha_bar_prev.sqrt() * beta / (1 - alpha_bar) * x0                   # mu~_t = sqrt(abar_{t-1}) beta_t / (1-abar_t) x0
            + alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar) * x_t         #      + sqrt(alpha_t) (1-abar_{t-1}) / (1-abar_t) x_t, eq. 7
        )
        if t == 0:
            return mean                                                           # x_0 = mu_theta(x_1, 1): no z at the last step (Alg. 2)
        sigma2 = beta if self.variance == "fixed_large" else s.posterior_variance[t]  # sigma_t^2 = beta_t or beta~_t (sec. 3.2)
        z = _draw(x_t, noise, generator)                                          # z ~ N(0, I)
        return mean + sigma2.sqrt() * z                                           # x_{t-1} = mu~_t + sigma_t z (Alg. 2, line 4)


class DDIMSampler(_Sampler):
    """DDIM on `steps` timesteps of [0, T) (Song et al. eq. 12); eta = 0 is deterministic, eta = 1 ~ DDPM.

    Args:
        schedule: the forward process the model was trained with.
        steps: number of denoising steps, 1 <= steps <= T.
        eta: scales sigma_t (eq. 16); 0 gives the deterministic DDIM.
        spacing: how the sub-grid is laid out ("leading", "trailing", "linspace"; see `ddim_timesteps`).
        prediction: what the network outputs ("eps", "x0" or "v").
        clip_x0: clamp the predicted x0 to [-1, 1] (True) or [-c, c] (a float); off by default.
        eps_from_clipped_x0: with clip_x0, step along the eps that the clipped x0 implies,
            (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), instead of the network's (diffusers'
            `use_clipped_model_output`): keeps x_t consistent with the clipped x0, which saves
            the samples of an under-trained pixel model from drifting off the data range.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        steps: int = 50,
        eta: float = 0.0,
        spacing: Spacing = "leading",
        prediction: Prediction = "eps",
        clip_x0: bool | float = False,
        eps_from_clipped_x0: bool = False,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eps_from_clipped_x0 and clip_x0 in (False, None):
            raise ValueError("eps_from_clipped_x0 needs clip_x0 (there is no clipped x0 to take eps from)")
        self.eps_from_clipped_x0 = eps_from_clipped_x0
        self.schedule = schedule
        self.steps = steps
        self.eta = float(eta)
        self.spacing = spacing
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.timesteps = ddim_timesteps(schedule.T, steps, spacing)
        grid = self.timesteps.tolist()
        self._prev = dict(zip(grid, grid[1:] + [-1]))  # t -> t', the next timestep of the grid (-1: done)

    def __repr__(self) -> str:
        return (
            f"DDIMSampler(T={self.schedule.T}, steps={self.steps}, eta={self.eta}, "
            f"spacing={self.spacing!r}, prediction={self.prediction!r})"
        )

    def prev_timestep(self, t: int) -> int:
        """The timestep a step from t lands on (-1 after the last one)."""
        if t not in self._prev:
            raise ValueError(
                f"timestep {t} is not on this DDIM grid ({self.steps} steps, spacing {self.spacing!r}); "
                f"grid starts {self.timesteps[:4].tolist()}..."
            )
        return self._prev[t]

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        noise: Tensor | None = None,
        generator: Generator = None,
    ) -> Tensor:
        """x_{t'} from x_t, t' the next timestep of the grid (DDIM eq. 12).

        Args:
            model_output: (B, C, H, W) eps_theta(x_t, t) (or x0 / v, per `prediction`).
            t: the current timestep; must be one of `.timesteps` (an int or a (B,) vector of it).
            x_t: (B, C, H, W).
            noise: z ~ N(0, I) shaped like x_t; drawn with `generator` when None and eta > 0
                (at every step, the last included, as diffusers does).

        Returns:
            x_{t'}: (B, C, H, W).
        """
        t = self._check_t(t, x_t, model_output)
        t_prev = self.prev_timestep(t)
        s = self.schedule
        alpha_bar = s.alpha_bar[t]
        alpha_bar_prev = s.alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0)  # abar_{t'}; 1 past the end
        x0, eps = split_prediction(model_output, x_t, alpha_bar, self.prediction)  # x0 = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t), eq. 12
        x0 = _clip(x0, self.clip_x0)                                                # optional: x0 in [-1, 1]
        if self.eps_from_clipped_x0:
            eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()            # the eps the clipped x0 implies
        sigma = self.eta * (                                                        # sigma_t(eta), eq. 16
            (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        ).sqrt()
        direction = (1 - alpha_bar_prev - sigma**2).sqrt() * eps                   # "direction pointing to x_t", eq. 12
        x_prev = alpha_bar_prev.sqrt() * x0 + direction                            # x_{t'} = sqrt(abar_{t'}) x0 + direction, eq. 12
        if self.eta > 0:
            z = _draw(x_t, noise, generator)                                        # z ~ N(0, I)
            x_prev = x_prev + sigma * z                                             # + sigma_t z, eq. 12
        return x_prev
