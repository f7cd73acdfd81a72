"""Sharpness of reconstructions: the Laplacian-energy ratio that tells blur from detail."""

import pytest
import torch
import torch.nn.functional as F

from tessera.eval import laplacian_energy, sharpness_ratio


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 32, 32, generator=g) * 2 - 1


def test_identity_is_one_and_blur_is_below_one_and_noise_above():
    x = _images()
    assert sharpness_ratio(x, x) == pytest.approx(1.0)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness_ratio(blurred, x) < 0.2
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = x + 0.5 * noise  # white noise of variance 0.25 on data of variance 1/3: ratio ~1.75
    assert sharpness_ratio(noisy, x) > 1.5


def test_laplacian_energy_of_a_ramp_is_zero_and_of_a_checkerboard_is_known():
    ramp = torch.linspace(0, 1, 16).expand(1, 1, 16, 16).clone()
    assert laplacian_energy(ramp).item() == pytest.approx(0.0, abs=1e-10)
    idx = torch.arange(8)
    board = ((idx[:, None] + idx[None, :]) % 2).float().view(1, 1, 8, 8) * 2 - 1
    # every inner pixel: 4 neighbours of the other sign -> |-4 v - 4 v| = 8
    assert laplacian_energy(board).item() == pytest.approx(64.0)


def test_bad_inputs_are_clear_errors():
    x = _images()
    with pytest.raises(ValueError, match="differ in shape"):
        sharpness_ratio(x[:2], x)
    with pytest.raises(ValueError, match="flat"):
        sharpness_ratio(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        laplacian_energy(x[0])
