"""Hostile inputs to schedules and samplers (issue 18): every DDIM grid, underflowing schedules,
shape errors with clear messages, every variance type finite."""

from __future__ import annotations

import pytest
import torch

from tessera.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, ddim_timesteps


@pytest.mark.parametrize("T", [1000, 7, 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_every_step_count_gives_a_valid_grid(T, spacing):
    for steps in range(1, T + 1):
        grid = ddim_timesteps(T, steps, spacing)
        assert len(grid) == steps, (steps, spacing)
        assert grid.dtype == torch.int64
        assert int(grid.min()) >= 0 and int(grid.max()) <= T - 1, (steps, spacing, grid[-3:].tolist())
        assert bool((grid[:-1] > grid[1:]).all()), (steps, spacing)  # strictly descending, no repeats
        if spacing == "trailing":
            assert int(grid[0]) == T - 1
        if spacing in ("leading", "linspace"):
            assert int(grid[-1]) == 0


@pytest.mark.parametrize("steps", [61, 103, 121, 999])
def test_trailing_ddim_samples_for_steps_that_do_not_divide_T(steps):
    sampler = DDIMSampler(NoiseSchedule.linear(1000), steps=steps, spacing="trailing")
    x = sampler.sample(lambda x, t: 0.1 * x, (1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("bad", ["zero", "float", "bool"])
def test_ddim_steps_must_be_a_positive_integer(bad):
    steps = {"zero": 0, "float": 2.5, "bool": True}[bad]
    with pytest.raises(ValueError, match="steps must be an integer"):
        ddim_timesteps(1000, steps)


def test_schedule_whose_alpha_bar_underflows_is_refused():
    with pytest.raises(ValueError, match=r"alpha_bar underflows to 0 .* t=\d+"):
        NoiseSchedule(torch.full((200,), 0.5))  # 0.5**200 = 6e-61: 0 in float32
    with pytest.raises(ValueError, match="alpha_bar underflows"):
        NoiseSchedule.linear(40000)
    with pytest.raises(ValueError, match="below float32 resolution"):
        NoiseSchedule(torch.tensor([1e-9, 0.01]))
    ok = NoiseSchedule(torch.full((100,), 0.5))  # 0.5**100 = 8e-31: small but usable
    x = DDIMSampler(ok, steps=10).sample(lambda x, t: torch.zeros_like(x), (1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_add_noise_with_the_wrong_number_of_timesteps_is_a_clear_error():
    s = NoiseSchedule.linear(100)
    x0 = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"one per sample .*\(4,\).*shape \(3,\)"):
        s.add_noise(x0, torch.randn_like(x0), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="one per sample"):
        s.add_noise(x0, torch.randn_like(x0), torch.zeros(4, 1, dtype=torch.long))
    one = s.add_noise(x0, torch.zeros_like(x0), torch.tensor([5]))  # a single value broadcasts
    assert torch.allclose(one, s.alpha_bar[5].sqrt() * x0)


@pytest.mark.parametrize("make", [lambda s: DDPMSampler(s), lambda s: DDIMSampler(s, steps=10, eta=0.5)])
def test_step_with_a_timestep_vector(make):
    s = NoiseSchedule.linear(100)
    sampler = make(s)
    t = int(sampler.timesteps[0])
    x = torch.randn(3, 1, 2, 2)
    out = torch.randn_like(x)
    z = torch.randn_like(x)
    same = sampler.step(out, torch.full((3,), t), x, noise=z)
    assert torch.equal(same, sampler.step(out, t, x, noise=z))  # a (B,) vector of one value is that value
    with pytest.raises(ValueError, match="different timesteps per sample"):
        sampler.step(out, torch.tensor([t, t, int(sampler.timesteps[1])]), x, noise=z)
    with pytest.raises(ValueError, match=r"\(B,\) vector"):
        sampler.step(out, torch.full((5,), t), x, noise=z)
    with pytest.raises(ValueError, match="model output shape"):
        sampler.step(out[:2], t, x, noise=z)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: DDPMSampler(s, variance="fixed_small"),
        lambda s: DDPMSampler(s, variance="fixed_large"),
        lambda s: DDPMSampler(s, prediction="v"),
        lambda s: DDPMSampler(s, prediction="x0"),
        lambda s: DDIMSampler(s, steps=50, eta=0.0),
        lambda s: DDIMSampler(s, steps=50, eta=1.0),
        lambda s: DDIMSampler(s, steps=1, eta=1.0, spacing="trailing"),
    ],
)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_every_sampler_variance_type_is_finite(make, kind):
    """Peer bug class (diffusers): a variance type whose first or last step divides by 0."""
    s = getattr(NoiseSchedule, kind)(200)
    sampler = make(s)
    seen = []
    x = sampler.sample(lambda x, t: 0.5 * x, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0),
                       callback=lambda i, t, x: seen.append(bool(torch.isfinite(x).all())))
    assert all(seen) and len(seen) == len(sampler.timesteps) and torch.isfinite(x).all()


def _tiny_unet(**kw):
    from tessera.core import create_model

    return create_model("unet_digits", img_size=16, widths=(8, 16), depth=1, attn_resolutions=(8,),
                        norm_groups=4, dropout=0.0, **kw).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unet_runs_in_reduced_precision(dtype):
    """The timestep embedding followed the weights' dtype only for fp32 ("mat1 and mat2 must have the same dtype")."""
    unet = _tiny_unet()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        ref = unet(x, t)
        low = unet.to(dtype)(x.to(dtype), t)
    assert low.dtype == dtype and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    # a whole (short) DDIM run in bf16/fp16 stays finite
    sampler = DDIMSampler(NoiseSchedule.linear(100), steps=5)
    out = sampler.sample(lambda x, t: unet(x.to(dtype), t).float(), (2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 3]), r"\[0, 3\).*\[3\]"),
        (torch.tensor([-1, 0]), r"\[0, 3\).*\[-1\]"),
        (torch.tensor([0.0, 1.0]), "integer tensor"),
        (torch.tensor([0, 1, 2]), r"shape \(B,\) = \(2,\)"),
        (None, "class-conditional"),
    ],
)
def test_unet_class_labels_checked(labels, message):
    unet = _tiny_unet(num_classes=3)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=message):
        unet(x, t, labels)
    assert unet(x, t, torch.tensor([0, 2])).shape == x.shape
