"""tessera.diffusion schedules, objectives and samplers against the notes' equations and diffusers."""

import math

import pytest
import torch

from tessera.diffusion import (
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    NonFiniteSampleError,
    diffusion_loss,
    min_snr_weights,
    split_prediction,
    training_target,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("T", [1000, 50])
def test_linear_schedule_equals_diffusers(T):
    s = NoiseSchedule.linear(T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    assert torch.equal(s.beta, ref.betas)
    assert torch.equal(s.alpha_bar, ref.alphas_cumprod)
    assert s.beta[0].item() == pytest.approx(1e-4) and s.beta[-1].item() == pytest.approx(0.02)


@pytest.mark.parametrize("T", [1000, 37])
def test_cosine_schedule_equals_squaredcos_cap_v2(T):
    s = NoiseSchedule.cosine(T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert torch.equal(s.beta, ref.betas)
    assert torch.allclose(s.alpha_bar, ref.alphas_cumprod, rtol=0, atol=1e-7)
    assert s.beta.max().item() <= 0.999 + 1e-7


def test_derived_tables():
    s = NoiseSchedule(torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(s.alpha, torch.tensor([0.9, 0.8, 0.7]))
    assert torch.allclose(s.alpha_bar, torch.tensor([0.9, 0.72, 0.504]))
    # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, 0 at t = 0
    assert s.posterior_variance[0] == 0
    assert s.posterior_variance[2].item() == pytest.approx((1 - 0.72) / (1 - 0.504) * 0.3, rel=1e-6)


@pytest.mark.parametrize("betas", [[0.1, 0.0, 0.2], [0.5, 1.0], [-0.1], [0.2, float("nan")], []])
def test_betas_outside_open_interval_raise(betas):
    with pytest.raises(ValueError, match="(0, 1)|non-empty"):
        NoiseSchedule(betas)


def test_add_noise_equals_diffusers_and_closed_form():
    s = NoiseSchedule.linear()
    ref = DDPMScheduler()
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    xt = s.add_noise(x0, eps, t)
    assert torch.allclose(xt, ref.add_noise(x0, eps, t), atol=1e-6)
    abar = s.alpha_bar[500]
    assert torch.allclose(xt[2], abar.sqrt() * x0[2] + (1 - abar).sqrt() * eps[2], atol=1e-6)
    assert torch.allclose(s.add_noise(x0, eps, 7), s.add_noise(x0, eps, torch.full((4,), 7)))


@pytest.mark.parametrize("t", [-1, 1000, [3, 1000]])
def test_timestep_outside_range_raises(t):
    s = NoiseSchedule.linear()
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        s.add_noise(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.as_tensor(t))
    with pytest.raises(ValueError, match="integers"):
        s.add_noise(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        DDPMSampler(s).step(torch.zeros(1, 1, 2, 2), 1000, torch.zeros(1, 1, 2, 2))


# ------------------------------------------------------------------ objectives


def test_predictions_round_trip_and_v_equals_diffusers():
    s = NoiseSchedule.cosine(100)
    x0, eps, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([1, 50, 99])
    xt = s.add_noise(x0, eps, t)
    abar = s.gather(s.alpha_bar, t, xt)
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(training_target(s, "v", x0, eps, t), ref.get_velocity(x0, eps, t), atol=1e-6)
    for pred in ("eps", "x0", "v"):
        x0_hat, eps_hat = split_prediction(training_target(s, pred, x0, eps, t), xt, abar, pred)
        assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, eps, atol=1e-3), pred


def test_loss_is_the_notes_l_simple_and_weights_apply():
    s = NoiseSchedule.linear(10)
    x0, eps, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0, 9])
    out = torch.randn(2, 1, 4, 4)
    assert torch.allclose(diffusion_loss(out, x0, eps, t, s), (eps - out).square().mean())
    w = torch.zeros(10)
    w[9] = 2.0
    expected = 2.0 * (eps[1] - out[1]).square().mean() / 2
    assert torch.allclose(diffusion_loss(out, x0, eps, t, s, weights=w), expected)
    assert min_snr_weights(s).shape == (10,)
    with pytest.raises(ValueError, match="prediction"):
        diffusion_loss(out, x0, eps, t, s, prediction="score")


# ------------------------------------------------------------------ DDPM


def _ddpm_ref(T, variance, schedule="linear"):
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, variance_type=variance, clip_sample=False)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_step_equals_diffusers(variance, schedule):
    s = NoiseSchedule.linear() if schedule == "linear" else NoiseSchedule.cosine(1000)
    ours, ref = DDPMSampler(s, variance=variance), _ddpm_ref(1000, variance, schedule)
    assert torch.equal(ours.timesteps, ref.timesteps)
    for t in [999, 700, 250, 1, 0]:
        xt, out = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        a = ours.step(out, t, xt, generator=torch.Generator().manual_seed(t))
        b = ref.step(out, t, xt, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.allclose(a, b, atol=1e-5), (t, (a - b).abs().max())
        # the same noise passed in explicitly
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(ours.step(out, t, xt, noise=z), a, atol=1e-6)


def test_ddpm_step_is_the_notes_equation():
    """x_{t-1} = 1/sqrt(alpha_t) (x_t - (1 - alpha_t)/sqrt(1 - abar_t) eps) + sigma_t z, sigma_t^2 = beta_t."""
    s = NoiseSchedule.linear()
    xt, eps, z = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    for t in [999, 400, 3]:
        a, ab, b = s.alpha[t], s.alpha_bar[t], s.beta[t]
        notes = (xt - (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt() + b.sqrt() * z
        assert torch.allclose(DDPMSampler(s, "fixed_large").step(eps, t, xt, noise=z), notes, atol=1e-5)


@pytest.mark.parametrize("prediction,diffusers_name", [("x0", "sample"), ("v", "v_prediction")])
def test_ddpm_other_predictions_and_clipping_equal_diffusers(prediction, diffusers_name):
    s = NoiseSchedule.linear()
    ours = DDPMSampler(s, prediction=prediction, clip_x0=True)
    ref = DDPMScheduler(prediction_type=diffusers_name, clip_sample=True)
    for t in [900, 20]:
        xt, out = torch.randn(2, 3, 4, 4) * 2, torch.randn(2, 3, 4, 4) * 2
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        assert torch.allclose(ours.step(out, t, xt, generator=g1), ref.step(out, t, xt, generator=g2).prev_sample, atol=1e-5)


# ------------------------------------------------------------------ DDIM


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 333, 1000])
def test_ddim_timesteps_equal_diffusers(spacing, steps):
    ref = DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = DDIMSampler(NoiseSchedule.linear(), steps=steps, spacing=spacing)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert (ours.timesteps[:-1] > ours.timesteps[1:]).all()
    if spacing == "trailing" or (spacing == "linspace" and steps > 1):
        assert ours.timesteps[0] == 999  # the grid includes the last timestep


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("leading", 7), ("trailing", 20), ("trailing", 50)])
def test_ddim_step_equals_diffusers(eta, spacing, steps):
    s = NoiseSchedule.linear()
    ours = DDIMSampler(s, steps=steps, eta=eta, spacing=spacing)
    ref = DDIMScheduler(timestep_spacing=spacing, clip_sample=False)
    ref.set_timesteps(steps)
    grid = ours.timesteps.tolist()
    for t in [grid[0], grid[len(grid) // 2], grid[-1]]:
        xt, out = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        a = ours.step(out, t, xt, generator=torch.Generator().manual_seed(t))
        b = ref.step(out, t, xt, eta=eta, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.allclose(a, b, atol=1e-5), (t, (a - b).abs().max())
        z = torch.randn(xt.shape)
        b2 = ref.step(out, t, xt, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(ours.step(out, t, xt, noise=z), b2, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_eps_from_the_clipped_x0_equals_diffusers_use_clipped_model_output(eta):
    s = NoiseSchedule.linear()
    ours = DDIMSampler(s, steps=20, eta=eta, clip_x0=True, eps_from_clipped_x0=True)
    plain = DDIMSampler(s, steps=20, eta=eta, clip_x0=True)
    ref = DDIMScheduler(clip_sample=True)
    ref.set_timesteps(20)
    t = ours.timesteps.tolist()[2]                         # high noise: x0 = (x_t - ...) / 0.03 leaves [-1, 1]
    xt, out = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    z = torch.randn(xt.shape)
    b = ref.step(out, t, xt, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
    assert torch.allclose(ours.step(out, t, xt, noise=z), b, atol=1e-5)
    assert not torch.allclose(plain.step(out, t, xt, noise=z), b, atol=1e-3)   # the option changes the step
    with pytest.raises(ValueError, match="needs clip_x0"):
        DDIMSampler(s, eps_from_clipped_x0=True)


def test_ddim_steps_to_the_next_grid_entry_and_rejects_off_grid():
    s = NoiseSchedule.linear()
    ddim = DDIMSampler(s, steps=20, spacing="linspace")
    grid = ddim.timesteps.tolist()
    assert [ddim.prev_timestep(t) for t in grid] == grid[1:] + [-1]
    # eta = 0 with eps = the true noise recovers x_{t'} of the same x0 exactly
    x0, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    t, t_prev = grid[3], grid[4]
    x_prev = ddim.step(eps, t, s.add_noise(x0, eps, t))
    assert torch.allclose(x_prev, s.add_noise(x0, eps, t_prev), atol=1e-4)
    with pytest.raises(ValueError, match="not on this DDIM grid"):
        ddim.step(eps, grid[3] + 1, x0)
    with pytest.raises(ValueError, match="steps"):
        DDIMSampler(s, steps=1001)
    with pytest.raises(ValueError, match="spacing"):
        DDIMSampler(s, spacing="uniform")


# ------------------------------------------------------------------ sampling loops


class _Toy(torch.nn.Module):
    """A fixed 'denoiser': eps_hat = 0.5 x_t + 0.01 t / T (enough to make the loop move)."""

    def forward(self, x, t):
        return 0.5 * x + 0.01 * t[:, None, None, None].float() / 50


def test_sampler_loop_regression():
    s = NoiseSchedule.linear(50)
    ddpm = DDPMSampler(s).sample(_Toy(), (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    ddim = DDIMSampler(s, steps=10).sample(_Toy(), (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    ddim_eta = DDIMSampler(s, steps=10, eta=1.0).sample(_Toy(), (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    got = [ddpm.flatten()[:3].tolist(), ddim.flatten()[:3].tolist(), ddim_eta.flatten()[:3].tolist()]
    expected = REGRESSION
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-4), got
    # seeded: the same generator seed gives the same samples
    again = DDPMSampler(s).sample(_Toy(), (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ddpm, again)


REGRESSION = [
    [-0.6596425, 0.0345275, -0.3656997],
    [-0.9946336, -1.0179907, -0.2237664],
    [-0.8225405, -0.8892306, -0.0592406],
]


def test_nan_during_sampling_names_the_step():
    s = NoiseSchedule.linear(20)

    def model(x, t):
        return torch.where(t[:, None, None, None] < 15, torch.full_like(x, math.nan), torch.zeros_like(x))

    with pytest.raises(NonFiniteSampleError, match="step 5 of 20 .*t=14") as err:
        DDPMSampler(s).sample(model, (1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert err.value.step == 5 and err.value.t == 14
    with pytest.raises(NonFiniteSampleError, match="t=14"):
        DDIMSampler(s, steps=20).sample(model, (1, 1, 2, 2))
