"""MCMC samplers for an energy E(x) = -log p(x) + const. No weights: any callable x -> (B,) works.

Notes 001, "Sampling". Every sampler runs B independent chains at once and
keeps the energy's gradient switched on where it needs one (even when called
under `torch.no_grad()`): the gradient is taken with respect to x only, so the
parameters of a model energy collect nothing.

Metropolis (the notes' algorithm; Metropolis et al. 1953):
    x' = x + sigma eta,  eta ~ N(0, I)
    accept with probability min(1, exp(E(x) - E(x')))   (always when the energy drops)

Langevin (unadjusted, the notes' update; Roberts & Tweedie 1996):
    x_{t+1} = x_t - eps grad_x E(x_t) + sqrt(2 eps) z_t,  z_t ~ N(0, I)
    exact only as eps -> 0 and t -> infinity.

SGLD as used to train EBMs (Du & Mordatch 2019, arXiv:1903.08689; Grathwohl et al. 2020, JEM):
    x_{t+1} = clip(x_t - step_size clip(grad_x E(x_t)) + noise_scale z_t)
    step size and noise decoupled (noise_scale != sqrt(2 step_size)): a biased but
    fast short-run sampler, not a sampler of exp(-E).

MALA (Langevin proposal + Metropolis-Hastings correction; Roberts & Tweedie 1996):
    x' = x - eps grad E(x) + sqrt(2 eps) z
    log q(x' | x) = -|x' - x + eps grad E(x)|^2 / (4 eps)
    accept with probability min(1, exp(E(x) - E(x') + log q(x | x') - log q(x' | x)))
    so that exp(-E) is exactly stationary for any eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ChainDivergedError",
    "EnergyFn",
    "LangevinSampler",
    "MALASampler",
    "MCMCResult",
    "MCMCSampler",
    "MetropolisSampler",
    "SGLDSampler",
    "energy_and_grad",
    "evaluate_energy",
]

EnergyFn = Callable[[Tensor], Tensor]  # x (B, *D) -> E(x) (B,)


class ChainDivergedError(FloatingPointError):
    """A chain reached a NaN / inf state or energy; `.step` is the (1-based) step that produced it."""

    def __init__(self, sampler: str, step: int, num_steps: int, bad_chains: int, what: str) -> None:
        super().__init__(
            f"{sampler}: {what} became NaN/inf at step {step} of {num_steps} in {bad_chains} chain(s); "
            "lower the step size or check the energy function"
        )
        self.step = step


class _NaNProposal(Exception):
    """Raised inside a step; the loop turns it into a ChainDivergedError naming the step."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


@dataclass
class MCMCResult:
    """What a sampler run returns.

    Attributes:
        x: the final states (B, *D).
        energy: E(x) of the final states (B,).
        chain: the kept states (S, B, *D) (every `keep_every`-th step, the start included), or None.
        chain_steps: the step index of each kept state (S,) (0 = the start).
        chain_energy: E at each kept state (S, B), or None.
        accept_rate: per-chain fraction of accepted proposals (B,); ones for samplers that always move.
        grad_norm: mean over chains of |grad_x E| at each step (T,); empty for Metropolis.
        steps: number of steps run.
    """

    x: Tensor
    energy: Tensor
    chain: Tensor | None
    chain_steps: Tensor
    chain_energy: Tensor | None
    accept_rate: Tensor
    grad_norm: Tensor
    steps: int

    @property
    def acceptance(self) -> float:
        """Mean acceptance rate over all chains and steps."""
        return float(self.accept_rate.mean())


class State(NamedTuple):
    """A batch of chain states with what the next step reuses."""

    x: Tensor  # (B, *D)
    energy: Tensor  # (B,)
    grad: Tensor | None  # (B, *D) grad_x E, for gradient samplers


def evaluate_energy(energy_fn: EnergyFn, x: Tensor) -> Tensor:
    """E(x) (B,), checking that the function gives one scalar per sample."""
    e = energy_fn(x)
    if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
        found = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(
            f"the energy function must return one scalar per sample, shape (B,) = ({x.shape[0]},); got {found}"
        )
    return e


def energy_and_grad(energy_fn: EnergyFn, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """E(x) (B,) and grad_x E(x) (B, *D), with autograd on even inside `torch.no_grad()`.

    The gradient of sum_b E(x_b) is taken with respect to x only: chains are
    independent, so the sum's gradient holds each chain's own gradient.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        e = evaluate_energy(energy_fn, x)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return e.detach(), g.detach()


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) shaped like `like`, drawn on the generator's device (CPU generators work for any device)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _rand(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) of shape (n,)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _sq_norm(v: Tensor) -> Tensor:
    """|v_b|^2 per chain: (B, *D) -> (B,)."""
    return v.flatten(1).square().sum(1)


class MCMCSampler:
    """Base of the samplers: the loop, the chain record and the NaN check; subclasses write `step`."""

    needs_grad: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def init_state(self, energy_fn: EnergyFn, x: Tensor) -> State:
        """Energy (and gradient) of the starting points."""
        if self.needs_grad:
            e, g = energy_and_grad(energy_fn, x)
            return State(x.detach(), e, g)
        with torch.no_grad():
            return State(x.detach(), evaluate_energy(energy_fn, x).detach(), None)

    def step(self, energy_fn: EnergyFn, state: State, generator: torch.Generator | None) -> tuple[State, Tensor]:
        """One transition of every chain: the new state and which chains moved (B,) bool."""
        raise NotImplementedError

    def sample(
        self,
        energy_fn: EnergyFn,
        x0: Tensor,
        steps: int,
        generator: torch.Generator | None = None,
        keep_every: int = 0,
    ) -> MCMCResult:
        """Run B chains from x0 (B, *D) for `steps` steps.

        Args:
            energy_fn: x (B, *D) -> E(x) (B,).
            x0: starting states (B, *D) (data, noise, a replay buffer...).
            steps: number of transitions (>= 0).
            generator: source of all randomness (seeded runs repeat exactly).
            keep_every: keep every k-th state in `chain` (0: keep none).

        Raises:
            ChainDivergedError: naming the step, when a state or its energy becomes NaN / inf.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {keep_every}")
        if x0.ndim < 2 or not x0.is_floating_point():
            raise ValueError(f"x0 must be a floating-point batch (B, *D), got {x0.dtype} {tuple(x0.shape)}")
        state = self.init_state(energy_fn, x0)
        self._check(state, 0, steps)
        B = x0.shape[0]
        accepted = torch.zeros(B, device=x0.device)
        grad_norm = []
        kept, kept_e, kept_steps = [], [], []
        if keep_every:
            kept, kept_e, kept_steps = [state.x.clone()], [state.energy.clone()], [0]
        for t in range(1, steps + 1):
            if state.grad is not None:
                grad_norm.append(state.grad.flatten(1).norm(dim=1).mean())
            try:
                state, moved = self.step(energy_fn, state, generator)
            except _NaNProposal as err:
                raise ChainDivergedError(self.name, t, steps, err.count, "a proposal's energy") from None
            self._check(state, t, steps)
            accepted += moved.to(accepted.dtype)
            if keep_every and t % keep_every == 0:
                kept.append(state.x.clone())
                kept_e.append(state.energy.clone())
                kept_steps.append(t)
        return MCMCResult(
            x=state.x,
            energy=state.energy,
            chain=torch.stack(kept) if kept else None,
            chain_steps=torch.tensor(kept_steps, dtype=torch.long),
            chain_energy=torch.stack(kept_e) if kept_e else None,
            accept_rate=accepted / max(steps, 1),
            grad_norm=torch.stack(grad_norm).cpu() if grad_norm else torch.zeros(0),
            steps=steps,
        )

    def _check(self, state: State, t: int, steps: int) -> None:
        bad_x = ~torch.isfinite(state.x.flatten(1)).all(1)
        if bad_x.any():
            raise ChainDivergedError(self.name, t, steps, int(bad_x.sum()), "the state")
        bad_e = ~torch.isfinite(state.energy)
        if bad_e.any():
            raise ChainDivergedError(self.name, t, steps, int(bad_e.sum()), "the energy")


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class MetropolisSampler(MCMCSampler):
    """Random-walk Metropolis with a symmetric Gaussian proposal x' = x + sigma eta (the notes' algorithm).

    Args:
        proposal_scale: sigma, the proposal's standard deviation (> 0); ~2.4 / sqrt(dim) times
            the target's scale gives the classic ~23% acceptance in high dimension.
    """

    def __init__(self, proposal_scale: float = 0.5) -> None:
        self.proposal_scale = _positive("proposal_scale", proposal_scale)

    def step(self, energy_fn: EnergyFn, state: State, generator: torch.Generator | None) -> tuple[State, Tensor]:
        x, e, _ = state
        x_prop = x + self.proposal_scale * _randn(x, generator)                # x' = x + sigma eta
        with torch.no_grad():
            e_prop = evaluate_energy(energy_fn, x_prop).detach()
        if torch.isnan(e_prop).any():
            raise _NaNProposal(int(torch.isnan(e_prop).sum()))
        log_u = _rand(x.shape[0], e, generator).log()
        accept = log_u < (e - e_prop)                                           # u < exp(E(x) - E(x'))
        mask = accept.view(-1, *([1] * (x.ndim - 1)))
        return State(torch.where(mask, x_prop, x), torch.where(accept, e_prop, e), None), accept


class LangevinSampler(MCMCSampler):
    """Unadjusted Langevin dynamics: x_{t+1} = x_t - eps grad E(x_t) + sqrt(2 eps) z_t (the notes' update).

    Args:
        step_size: eps (> 0). The stationary law is exp(-E) only as eps -> 0 (MALA corrects the bias).
    """

    needs_grad = True

    def __init__(self, step_size: float = 0.01) -> None:
        self.step_size = _positive("step_size", step_size)

    def step(self, energy_fn: EnergyFn, state: State, generator: torch.Generator | None) -> tuple[State, Tensor]:
        eps = self.step_size
        x = state.x - eps * state.grad + math.sqrt(2 * eps) * _randn(state.x, generator)  # x - eps grad E + sqrt(2 eps) z
        e, g = energy_and_grad(energy_fn, x)
        return State(x, e, g), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


class SGLDSampler(MCMCSampler):
    """Langevin as used to train EBMs: decoupled step size and noise, gradient and state clipping.

    x_{t+1} = clamp(x_t - step_size clip(grad E(x_t)) + noise_scale z_t) (Du & Mordatch 2019:
    step_size 10, noise_scale 0.005 on images in [0, 1]; JEM: step 1, noise 0.01 on [-1, 1]).

    Args:
        step_size: multiplier of the gradient (> 0).
        noise_scale: standard deviation of the added noise (>= 0).
        grad_clip: clamp every gradient element to [-grad_clip, grad_clip] (None: off).
        clamp: keep the state inside (low, high), e.g. the data's pixel range (None: off).
    """

    needs_grad = True

    def __init__(
        self,
        step_size: float = 1.0,
        noise_scale: float = 0.01,
        grad_clip: float | None = None,
        clamp: tuple[float, float] | None = None,
    ) -> None:
        self.step_size = _positive("step_size", step_size)
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale!r}")
        self.noise_scale = float(noise_scale)
        self.grad_clip = None if grad_clip is None else _positive("grad_clip", grad_clip)
        if clamp is not None and not clamp[0] < clamp[1]:
            raise ValueError(f"clamp must be (low, high) with low < high, got {clamp}")
        self.clamp = clamp

    def step(self, energy_fn: EnergyFn, state: State, generator: torch.Generator | None) -> tuple[State, Tensor]:
        g = state.grad
        if self.grad_clip is not None:
            g = g.clamp(-self.grad_clip, self.grad_clip)
        x = state.x - self.step_size * g
        if self.noise_scale > 0:
            x = x + self.noise_scale * _randn(x, generator)
        if self.clamp is not None:
            x = x.clamp(*self.clamp)
        e, g = energy_and_grad(energy_fn, x)
        return State(x, e, g), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


class MALASampler(MCMCSampler):
    """Metropolis-adjusted Langevin: the Langevin step as a proposal, accepted by Metropolis-Hastings.

    Args:
        step_size: eps (> 0); exp(-E) is exactly stationary for any eps, the acceptance falls as it grows
            (~57% is optimal in high dimension).
    """

    needs_grad = True

    def __init__(self, step_size: float = 0.01) -> None:
        self.step_size = _positive("step_size", step_size)

    def _log_q(self, to: Tensor, frm: Tensor, grad_frm: Tensor) -> Tensor:
        """log q(to | frm) up to a constant: -|to - frm + eps grad E(frm)|^2 / (4 eps)."""
        return -_sq_norm(to - frm + self.step_size * grad_frm) / (4 * self.step_size)

    def step(self, energy_fn: EnergyFn, state: State, generator: torch.Generator | None) -> tuple[State, Tensor]:
        x, e, g = state
        eps = self.step_size
        x_prop = x - eps * g + math.sqrt(2 * eps) * _randn(x, generator)       # Langevin proposal
        e_prop, g_prop = energy_and_grad(energy_fn, x_prop)
        if torch.isnan(e_prop).any():
            raise _NaNProposal(int(torch.isnan(e_prop).sum()))
        log_alpha = (e - e_prop) + self._log_q(x, x_prop, g_prop) - self._log_q(x_prop, x, g)
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)  # inf - inf in a rejected far proposal
        accept = _rand(x.shape[0], e, generator).log() < log_alpha
        mask = accept.view(-1, *([1] * (x.ndim - 1)))
        return (
            State(torch.where(mask, x_prop, x), torch.where(accept, e_prop, e), torch.where(mask, g_prop, g)),
            accept,
        )
