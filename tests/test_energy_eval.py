"""Toy 2-D densities and the evaluation functions: grid likelihood, KDE, MMD, ESS, AUROC, sampler comparison."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.data.toy2d import TOY_DENSITIES, Toy2DDataModule, toy_density
from tessera.energy import LangevinSampler, MALASampler, MetropolisSampler
from tessera.energy.evaluate import (
    auroc,
    compare_samplers,
    density_grid,
    effective_sample_size,
    grid_log_likelihood,
    grid_log_normalizer,
    kde_log_likelihood,
    kde_select_bandwidth,
    mmd2,
    ood_images,
    plot_density_panels,
)


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("name", sorted(TOY_DENSITIES))
def test_toy_density_is_normalised_and_matches_its_samples(name):
    d = toy_density(name)
    # the grid integral of exp(log_prob) over the box is 1
    assert math.exp(grid_log_normalizer(lambda x: -d.log_prob(x), n=300)) == pytest.approx(1.0, abs=2e-3)
    # mean log p over samples (a Monte-Carlo entropy) equals the grid's int p log p, within 5 standard errors
    x = d.sample(4000, torch.Generator().manual_seed(0))
    logp = d.log_prob(x)
    assert torch.isfinite(logp).all()
    p = density_grid(d.log_prob, n=120).double()
    h2 = (10 / 120) ** 2
    neg_entropy = float((p * p.clamp_min(1e-300).log()).sum() * h2)
    se = float(logp.std()) / math.sqrt(len(logp)) if len(logp) > 1 else 0.0
    assert abs(float(logp.mean()) - neg_entropy) <= 5 * se + 0.02


def test_unknown_toy_density_is_a_clear_error():
    with pytest.raises(ValueError, match="8gaussians"):
        toy_density("spirals")


def test_toy_datamodule_fixed_splits_and_resumable_loader():
    dm = Toy2DDataModule("2moons", n_train=100, n_val=10, n_test=20, batch_size=32)
    dm.setup()
    again = Toy2DDataModule("2moons", n_train=100, n_val=10, n_test=20, batch_size=32)
    assert torch.equal(dm.points("train"), again.points("train"))
    loader = dm.train_dataloader()
    batches = [b[0] for b in loader]
    assert len(batches) == 3 and batches[0].shape == (32, 2)
    state = {"epoch": 0, "batches": 1}
    loader2 = again.train_dataloader()
    loader2.load_state_dict(state)
    rest = [b[0] for b in loader2]
    assert len(rest) == 2 and torch.equal(rest[0], batches[1])


def test_grid_log_likelihood_of_a_shifted_unnormalised_gaussian():
    # E(x) = |x|^2 / 2 + 7: log p(x) = -|x|^2/2 - log(2 pi), whatever the constant
    x = torch.randn(1000, 2)
    ll = grid_log_likelihood(lambda p: 0.5 * p.square().sum(1) + 7.0, x, n=200)
    exact = float((-0.5 * x.square().sum(1) - math.log(2 * math.pi)).mean())
    assert ll == pytest.approx(exact, abs=1e-3)


def test_kde_with_one_point_is_a_gaussian_and_bandwidth_selection_prefers_the_truth():
    test = torch.randn(50, 2)
    ll = kde_log_likelihood(torch.zeros(1, 2), test, 1.0)
    assert ll == pytest.approx(float((-0.5 * test.square().sum(1) - math.log(2 * math.pi)).mean()), rel=1e-6)
    d = toy_density("8gaussians")
    g = torch.Generator().manual_seed(0)
    h = kde_select_bandwidth(d.sample(2000, g), d.sample(500, g))
    assert 0.05 < h < 0.5
    with pytest.raises(ValueError, match="bandwidth"):
        kde_log_likelihood(test, test, 0.0)


def test_mmd_near_zero_for_one_law_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    c = torch.randn(400, 2, generator=g) * 1.5 + 0.5
    same, diff = mmd2(a, b), mmd2(a, c)
    assert abs(same) < 0.03 and diff > 10 * max(abs(same), 1e-3)


def test_auroc_against_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (60,), generator=g).float()  # ties on purpose
    b = torch.randint(2, 8, (40,), generator=g).float()
    pairs = (b[None, :] > a[:, None]).double().mean() + 0.5 * (b[None, :] == a[:, None]).double().mean()
    assert auroc(a, b) == pytest.approx(float(pairs), abs=1e-12)
    assert auroc(torch.zeros(3), torch.ones(3)) == 1.0 and auroc(torch.ones(3), torch.zeros(3)) == 0.0


def test_effective_sample_size_of_iid_and_ar1_chains():
    g = torch.Generator().manual_seed(0)
    T, B = 2000, 8
    iid = torch.randn(T, B, 1, generator=g)
    assert float(effective_sample_size(iid)[0]) == pytest.approx(T * B, rel=0.15)
    phi = 0.9
    z = torch.randn(T, B, 1, generator=g)
    ar = torch.zeros_like(z)
    for t in range(1, T):
        ar[t] = phi * ar[t - 1] + math.sqrt(1 - phi**2) * z[t]
    expected = T * B * (1 - phi) / (1 + phi)
    assert float(effective_sample_size(ar)[0]) == pytest.approx(expected, rel=0.25)


def test_compare_samplers_gradient_samplers_converge_faster_than_a_small_random_walk():
    energy = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    x0 = torch.full((200, 2), 4.0)
    out = compare_samplers(
        energy,
        {"metropolis": MetropolisSampler(0.2), "langevin": LangevinSampler(0.1), "mala": MALASampler(0.3)},
        x0, steps=100, target_mean=torch.zeros(2), target_cov=torch.eye(2), tol=0.15,
    )
    assert set(out) == {"metropolis", "langevin", "mala"}
    assert out["mala"]["steps_to_tol"] < out["metropolis"]["steps_to_tol"]
    assert out["langevin"]["steps_to_tol"] < out["metropolis"]["steps_to_tol"]
    assert out["mala"]["ess_per_1k_steps"] > out["metropolis"]["ess_per_1k_steps"]


def test_ood_images_and_density_plot(tmp_path):
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    sets = ood_images(x)
    assert torch.equal(sets["inverted"], -x) and sets["rotated90"].shape == x.shape
    assert all(s.min() >= -1 and s.max() <= 1 for s in sets.values())
    grid = density_grid(toy_density("rings").log_prob, n=50)
    path = plot_density_panels([("truth", grid), ("points", torch.randn(100, 2))], tmp_path / "d.png")
    assert path.stat().st_size > 1000
