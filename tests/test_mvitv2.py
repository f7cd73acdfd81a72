"""MViTv2: parity with a recorded timm model, pooling geometry, figures of the paper, errors."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tessera
from tessera.models.mvitv2 import MViTv2Config, rel_pos_along

FIXTURE = Path(__file__).parent / "fixtures" / "mvitv2_timm_tiny.safetensors"
TINY_TIMM = dict(img_size=32, embed_dim=16, depths=(1, 2), num_heads=1, kv_stride=2, num_classes=5)


def test_timm_checkpoint_gives_the_recorded_timm_logits(tmp_path):
    """timm's own output, recorded by tests/fixtures/make_mvitv2_fixture.py (timm cannot be imported here)."""
    rec = load_file(FIXTURE)
    weights = {k.removeprefix("weights."): v for k, v in rec.items() if k.startswith("weights.")}
    torch.save(weights, tmp_path / "timm_mvitv2.pth")
    model = tessera.create_model("mvitv2_tiny", checkpoint=tmp_path / "timm_mvitv2.pth", **TINY_TIMM).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(rec["input"]), rec["logits"], rtol=0, atol=1e-4)


def test_pooling_geometry_and_feature_info():
    model = tessera.create_model("mvitv2_tiny", **TINY_TIMM).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
    assert [m.shape for m in maps] == [(1, 16, 8, 8), (1, 32, 4, 4)]
    assert [f["reduction"] for f in model.feature_info] == [4, 8]
    first = model.stages[1].blocks[0]
    assert first.shortcut_proj_attn is not None and first.shortcut_pool_attn is not None
    assert model.stages[0].blocks[0].attn.pool_k.stride == (2, 2)  # K, V pooled more in stage 1
    assert model.stages[1].blocks[0].attn.pool_k.stride == (1, 1)


def test_relative_offsets_use_the_finer_grid():
    table = torch.arange(7.0)[:, None]  # offsets -3..3 of a 4-long axis
    R = rel_pos_along(table, 4, 2)  # queries on 4 rows, keys pooled to 2 rows
    # query row i vs key row j sits at offset i - 2 j on the finer grid, shifted by (2 - 1) * 2
    expected = torch.tensor([[i - 2 * j + 2 for j in range(2)] for i in range(4)], dtype=torch.float32)
    torch.testing.assert_close(R[..., 0], expected)


def test_another_input_size_resizes_the_tables():
    model = tessera.create_model("mvitv2_tiny", **TINY_TIMM).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 48, 48))
    assert y.shape == (1, 5) and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,params,macs", [("mvitv2_tiny", 24e6, 4.7e9), ("mvitv2_small", 35e6, 7.0e9), ("mvitv2_base", 52e6, 10.2e9)]
)
def test_params_and_macs_match_the_paper(name, params, macs):
    p, m = tessera.profile(tessera.create_model(name), (3, 224, 224))
    assert abs(p / params - 1) < 0.02 and abs(m / macs - 1) < 0.02


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="num_heads"):
        MViTv2Config(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="smaller than the total reduction"):
        MViTv2Config(img_size=16)
    with pytest.raises(ValueError, match="channels"):
        tessera.create_model("mvitv2_tiny", **TINY_TIMM)(torch.randn(1, 1, 32, 32))
