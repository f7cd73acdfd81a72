"""The conditional LDM UNet: parity with diffusers' UNet2DConditionModel, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch

import tessera
from tessera.diffusion.ldm_convert import (
    config_from_diffusers,
    from_diffusers,
    load_diffusers_folder,
    state_dict_to_diffusers,
    to_diffusers,
)
from tessera.diffusion.ldm_unet import LDMUNet, LDMUNetConfig, sd_timestep_embedding

diffusers = pytest.importorskip("diffusers")

# diffusers' own test config of UNet2DConditionModel (tests/models/unets/test_models_unet_2d_condition.py)
DIFFUSERS_TINY = dict(
    block_out_channels=(4, 8),
    norm_num_groups=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=8,
    attention_head_dim=2,  # diffusers' name for the number of heads (#2011)
    out_channels=4,
    in_channels=4,
    layers_per_block=1,
    sample_size=16,
)

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves (and a shared CPU oversubscribes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def random_reference(**overrides) -> torch.nn.Module:
    """A diffusers UNet2DConditionModel with random weights (biases and norms away from 0 / 1 too)."""
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**{**DIFFUSERS_TINY, **overrides}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref


def inputs(B: int = 2, C: int = 4, S: int = 16, M: int = 5, D: int = 8):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(B, C, S, S, generator=g),
        torch.tensor([3, 700][:B]),
        torch.randn(B, M, D, generator=g),
    )


def test_time_embedding_is_diffusers_flip_sin_to_cos_shift_0():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(sd_timestep_embedding(t, 32), ref)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # cross-attention at both levels, two blocks per level, two transformer blocks, 3 heads
        pytest.param(dict(
            block_out_channels=(6, 12), norm_num_groups=3, layers_per_block=2, attention_head_dim=3,
            transformer_layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2, sample_size=8,
        ), marks=pytest.mark.slow),
    ],
    ids=["diffusers-test-config", "cross-at-every-level"],
)
def test_outputs_match_diffusers_unet2dconditionmodel(overrides):
    ref = random_reference(**overrides)
    model = from_diffusers(ref).eval()
    S = ref.config.sample_size
    x, t, ctx = inputs(C=4, S=S)
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample
        got = model(x, t, cond=ctx)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_heads_are_read_from_diffusers_attention_head_dim():
    cfg = config_from_diffusers(dict(random_reference().config))
    assert cfg.heads == (2, 2) and cfg.transformer_levels == (0,) and cfg.context_dim == 8


def test_saved_diffusers_folder_loads_into_tessera(tmp_path):
    ref = random_reference()
    ref.save_pretrained(tmp_path / "unet")  # config.json + diffusion_pytorch_model.safetensors
    model = load_diffusers_folder(tmp_path / "unet", "ldm_unet_digits").eval()
    x, t, ctx = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), ref(x, t, encoder_hidden_states=ctx).sample, atol=1e-4, rtol=0)


def test_tessera_to_diffusers_round_trip():
    torch.manual_seed(0)
    model = tessera.create_model("ldm_unet_digits", **tessera.core.tiny_overrides("ldm_unet_digits")).eval()
    ref = to_diffusers(model)
    x, t, ctx = inputs(S=8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), ref(x, t, encoder_hidden_states=ctx).sample, atol=1e-5, rtol=0)
    back = from_diffusers(ref)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert set(state_dict_to_diffusers(model.state_dict())) == set(ref.state_dict())


def test_unsupported_diffusers_option_is_named():
    with pytest.raises(ValueError, match="use_linear_projection"):
        config_from_diffusers({**dict(random_reference().config), "use_linear_projection": True})


# ---------------------------------------------------------------- bad input


def tiny() -> LDMUNet:
    return LDMUNet(LDMUNetConfig(**tessera.core.tiny_overrides("ldm_unet_f4"))).eval()


def test_context_of_the_wrong_width_is_a_clear_error():
    model = tiny()
    x, t, ctx = model.example_inputs(2)
    with pytest.raises(ValueError, match="d_r=8"):
        model(x, t, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="B=2"):
        model(x, t, ctx[:1])
    with pytest.raises(ValueError, match="conditional"):
        model(x, t)


def test_latent_channels_and_size_are_checked():
    model = tiny()
    x, t, ctx = model.example_inputs(2)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 3, 8, 8), t, ctx)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(2, 4, 7, 7), t, ctx)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="heads"):
        LDMUNetConfig(widths=(8, 16), heads=(2,), norm_groups=4)
    with pytest.raises(ValueError, match="transformer_levels"):
        LDMUNetConfig(widths=(8, 16), heads=(2, 2), transformer_levels=(2,), norm_groups=4)
    with pytest.raises(ValueError, match="divisible by heads"):
        LDMUNetConfig(widths=(8, 16), heads=(3, 2), transformer_levels=(0,), norm_groups=4)
