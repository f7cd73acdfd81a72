"""The SSL wrappers run on every registered encoder family, through the encoder API only."""

from __future__ import annotations

import pytest
import torch

import tessera
from tessera.core import tiny_overrides
from tessera.core.registry import builder_class
from tessera.ssl.dino import DINO, DINOConfig
from tessera.ssl.simmim import SimMIM, SimMIMConfig


def one_encoder_per_family() -> list[str]:
    seen: dict[object, str] = {}
    for name in tessera.list_models(kind="encoder"):
        seen.setdefault(builder_class(name) or name, name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", one_encoder_per_family())
def test_simmim_and_dino_on_every_encoder_family(name):
    enc = tiny_overrides(name)
    simmim = SimMIM(SimMIMConfig(encoder=name, encoder_args=enc, mask_patch_size=8)).train()
    x, mask = simmim.example_inputs(2)
    out = simmim(x, mask)
    assert out.reconstruction.shape == x.shape and torch.isfinite(out.loss)
    out.loss.backward()
    assert simmim.decoder[0].weight.grad is not None

    dino = DINO(DINOConfig(encoder=name, encoder_args=enc, out_dim=16, hidden_dim=16, bottleneck_dim=8,
                           num_local_crops=0)).train()
    g, _ = dino.example_inputs(2)
    res = dino(g)
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert all(p.grad is not None for p in dino.student.head.parameters())
