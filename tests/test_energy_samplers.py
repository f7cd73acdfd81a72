"""MCMC samplers on densities with known moments: a correlated Gaussian and a two-component mixture.

Tolerances follow from the sample count: each test runs n independent chains
and uses their final states, so the sample mean has standard error
sqrt(var / n), a sample variance sqrt(2 / n) var, a fraction sqrt(p (1 - p) / n).
We allow 4.5 standard errors (a false alarm about once in 10^5 per check) plus,
for unadjusted Langevin, its O(eps) discretisation bias.
"""

from __future__ import annotations

import math

import pytest
import torch

from tessera.energy import (
    ChainDivergedError,
    LangevinSampler,
    MALASampler,
    MetropolisSampler,
    SGLDSampler,
)


pytestmark = pytest.mark.usefixtures("one_thread")

N_CHAINS = 2000
Z = 4.5  # standard errors allowed

MU = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
PREC = torch.linalg.inv(COV)


def gaussian_energy(x: torch.Tensor) -> torch.Tensor:
    """E(x) = (x - mu)^T Sigma^-1 (x - mu) / 2."""
    d = x - MU
    return 0.5 * ((d @ PREC) * d).sum(1)


MIX_MEANS = torch.tensor([[-1.2, 0.0], [1.2, 0.0]])
MIX_W = torch.tensor([0.3, 0.7])
MIX_S = 0.6


def mixture_energy(x: torch.Tensor) -> torch.Tensor:
    """E(x) = -log sum_k w_k N(x; mu_k, s^2 I)."""
    d2 = (x[:, None, :] - MIX_MEANS).square().sum(-1)
    return -torch.logsumexp(MIX_W.log() - d2 / (2 * MIX_S**2) - math.log(2 * math.pi * MIX_S**2), dim=1)


def mixture_moments() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact mean, covariance and P(x_0 > 0) of the mixture."""
    mean = (MIX_W[:, None] * MIX_MEANS).sum(0)
    second = (MIX_W[:, None, None] * (MIX_MEANS[:, :, None] * MIX_MEANS[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :] + MIX_S**2 * torch.eye(2)
    normal = torch.distributions.Normal(0.0, 1.0)
    p_right = float((MIX_W * normal.cdf(MIX_MEANS[:, 0] / MIX_S)).sum())
    return mean, cov, p_right


def check_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, bias: float = 0.0) -> None:
    """Sample mean and covariance within Z standard errors (+ a relative bias allowance on the covariance)."""
    n = x.shape[0]
    var = torch.diagonal(cov)
    se_mean = (var / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= Z * se_mean).all(), (x.mean(0), mean)
    emp = torch.cov(x.T)
    # var(S_ij) = (S_ij^2 + S_ii S_jj) / n for Gaussian-like data
    se_cov = ((cov.square() + var[:, None] * var[None, :]) / n).sqrt()
    tol = Z * se_cov + bias * (var[:, None] * var[None, :]).sqrt()
    assert ((emp - cov).abs() <= tol).all(), (emp, cov)


def start(seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_CHAINS, 2, generator=g) * scale, g


# eps = 0.05 for unadjusted Langevin: its stationary variance is var / (1 - eps lambda / 2) for a
# Gaussian, lambda <= 1.45 here, so <= 4% too large; allow 5%.
SAMPLERS = {
    "metropolis": (lambda: MetropolisSampler(proposal_scale=1.0), 0.0),
    "langevin": (lambda: LangevinSampler(step_size=0.05), 0.05),
    "mala": (lambda: MALASampler(step_size=0.2), 0.0),
    "sgld_as_langevin": (lambda: SGLDSampler(step_size=0.05, noise_scale=math.sqrt(0.1)), 0.05),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_gaussian_mean_and_covariance(name):
    make, bias = SAMPLERS[name]
    x0, g = start()
    res = make().sample(gaussian_energy, x0, steps=300, generator=g)
    check_moments(res.x, MU, COV, bias)


@pytest.mark.parametrize("name", ["metropolis", "langevin", "mala"])
def test_mixture_mean_covariance_and_weights(name):
    make, bias = SAMPLERS[name]
    mean, cov, p_right = mixture_moments()
    x0, g = start(1)
    res = make().sample(mixture_energy, x0, steps=400, generator=g)
    check_moments(res.x, mean, cov, bias)
    frac = float((res.x[:, 0] > 0).float().mean())
    se = math.sqrt(p_right * (1 - p_right) / N_CHAINS)
    assert abs(frac - p_right) <= Z * se + (0.02 if bias else 0.0), (frac, p_right)


def test_mixture_weights_are_not_found_from_one_mode():
    """The weight check can fail: chains started in the left mode only, run briefly, stay there."""
    g = torch.Generator().manual_seed(0)
    x0 = MIX_MEANS[0] + 0.1 * torch.randn(N_CHAINS, 2, generator=g)
    res = LangevinSampler(0.01).sample(mixture_energy, x0, steps=20, generator=g)
    _, _, p_right = mixture_moments()
    assert abs(float((res.x[:, 0] > 0).float().mean()) - p_right) > 0.3


def test_seeded_runs_repeat_and_chain_is_kept_every_k():
    sampler = MALASampler(0.1)
    a = sampler.sample(gaussian_energy, torch.zeros(8, 2), 10, generator=torch.Generator().manual_seed(3), keep_every=5)
    b = sampler.sample(gaussian_energy, torch.zeros(8, 2), 10, generator=torch.Generator().manual_seed(3), keep_every=5)
    c = sampler.sample(gaussian_energy, torch.zeros(8, 2), 10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.chain.shape == (3, 8, 2) and a.chain_steps.tolist() == [0, 5, 10]
    assert torch.equal(a.chain[-1], a.x) and torch.equal(a.chain[0], torch.zeros(8, 2))
    torch.testing.assert_close(a.chain_energy[-1], gaussian_energy(a.x))
    assert c.chain is None and a.accept_rate.shape == (8,) and a.grad_norm.shape == (10,)


def test_metropolis_acceptance_falls_with_the_proposal_scale():
    rates = []
    for scale in (0.1, 1.0, 10.0):
        x0, g = start()
        rates.append(MetropolisSampler(scale).sample(gaussian_energy, x0[:500], 50, generator=g).acceptance)
    assert rates[0] > rates[1] > rates[2] and rates[0] > 0.9 and rates[2] < 0.1


def test_mala_accepts_almost_all_small_steps_and_fewer_large_ones():
    x0, g = start()
    small = MALASampler(0.01).sample(gaussian_energy, x0[:500], 50, generator=g).acceptance
    large = MALASampler(1.5).sample(gaussian_energy, x0[:500], 50, generator=g).acceptance
    assert small > 0.98 and large < 0.7


def test_gradient_samplers_work_under_no_grad_and_leave_parameters_alone():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        res = LangevinSampler(0.01).sample(lambda x: net(x).squeeze(1), torch.zeros(4, 2), 5)
    assert torch.isfinite(res.x).all() and not torch.equal(res.x, torch.zeros(4, 2))
    assert all(p.grad is None for p in net.parameters())


def test_sgld_clips_gradients_and_state():
    steep = lambda x: 1e3 * x.sum(1)  # noqa: E731  gradient 1000 everywhere
    res = SGLDSampler(step_size=1.0, noise_scale=0.0, grad_clip=0.01).sample(steep, torch.zeros(3, 2), 4)
    torch.testing.assert_close(res.x, torch.full((3, 2), -0.04))
    res = SGLDSampler(step_size=1.0, noise_scale=0.0, clamp=(-0.5, 0.5)).sample(steep, torch.zeros(3, 2), 2)
    torch.testing.assert_close(res.x, torch.full((3, 2), -0.5))


def test_bad_settings_are_clear_errors():
    for make in (lambda: LangevinSampler(0.0), lambda: MALASampler(-1.0), lambda: SGLDSampler(step_size=0)):
        with pytest.raises(ValueError, match="step_size"):
            make()
    with pytest.raises(ValueError, match="proposal_scale"):
        MetropolisSampler(0.0)
    with pytest.raises(ValueError, match="noise_scale"):
        SGLDSampler(noise_scale=-1.0)
    with pytest.raises(ValueError, match=r"one scalar per sample.*\(4,\).*\(4, 2\)"):
        LangevinSampler(0.1).sample(lambda x: x * 2, torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="one scalar per sample"):
        MetropolisSampler(0.1).sample(lambda x: x.sum(), torch.zeros(4, 2), 3)


def test_nan_stops_the_chain_naming_the_step():
    # E = -|x|^4 pushes Langevin outwards ever faster: overflow to inf, then NaN, within a few steps.
    with pytest.raises(ChainDivergedError, match=r"step \d+ of 100") as info:
        LangevinSampler(0.5).sample(lambda x: -x.square().sum(1).square(), torch.full((2, 2), 3.0), 100)
    assert 1 <= info.value.step < 100

    def nan_from_the_fourth_call(x, calls=[0]):  # noqa: B006  counts calls (call 1: the start, then one per step)
        calls[0] += 1
        return x.square().sum(1) * (float("nan") if calls[0] > 3 else 1.0)

    with pytest.raises(ChainDivergedError, match="step 3 of 10"):
        MetropolisSampler(0.1).sample(nan_from_the_fourth_call, torch.zeros(2, 2), 10)


def test_seeded_tiny_loops_against_recorded_numbers():
    """A silent change of a sampler's arithmetic or of its order of random draws fails here."""
    energy = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    recorded = {
        MetropolisSampler(0.5): ([0.4906522, 1.7019045, -0.0110218, 2.2027256], [0.8, 0.6]),
        MALASampler(0.1): ([0.6609408, 1.1736026, -0.0296208, 2.4208837], [1.0, 1.0]),
        SGLDSampler(0.1, 0.05, grad_clip=0.5): ([0.6657111, 0.7189175, 0.5332369, 0.7601043], [1.0, 1.0]),
    }
    for sampler, (x, acc) in recorded.items():
        res = sampler.sample(energy, torch.ones(2, 2), 5, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(res.x.flatten(), torch.tensor(x), rtol=0, atol=1e-6, msg=sampler.name)
        torch.testing.assert_close(res.accept_rate, torch.tensor(acc), rtol=0, atol=1e-6, msg=sampler.name)
