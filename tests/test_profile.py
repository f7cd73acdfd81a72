import torch
from torch import nn

from tessera.layers import attend
from tessera.profile import count_macs, profile


def test_linear_macs():
    assert count_macs(nn.Linear(10, 20), torch.zeros(3, 10)) == 3 * 10 * 20


def test_attention_matmuls_are_counted_on_cpu():
    class Attn(nn.Module):
        def forward(self, q):
            return attend(q, q, q, torch.zeros(1, 1, 10, 10))

    q = torch.zeros(2, 4, 10, 8)
    # Q K^T and A V: 2 * (B h N M d)
    assert count_macs(Attn(), q) == 2 * (2 * 4 * 10 * 10 * 8)


def test_profile_counts_params_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).train()
    params, macs = profile(model, (3, 16, 16))
    assert params == sum(p.numel() for p in model.parameters())
    assert macs == 8 * 3 * 16 * 16 + 8 * 16 * 5
    assert model.training
