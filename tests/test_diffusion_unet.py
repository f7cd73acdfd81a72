"""The DDPM UNet: shapes, errors, presets, and parity with diffusers' UNet2DModel after a weight copy."""

import pytest
import torch

import tessera
from tessera.diffusion import UNet, UNetConfig, create_unet, unet_ddpm_cifar10
from tessera.diffusion.convert import (
    config_from_diffusers,
    from_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    to_diffusers,
    to_diffusers_config,
)
from tessera.io.checkpoint import load_checkpoint

TINY = dict(img_size=16, widths=(16, 32), depth=1, attn_resolutions=(8,), norm_groups=8, dropout=0.0)


def _tiny(**kw) -> UNet:
    return tessera.create_model("unet_ddpm_cifar10", **{**TINY, **kw})


def _randomise(model):
    # default init zero-initialises nothing, but larger weights make parity checks stricter
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.mark.slow
def test_forward_shape_grad_and_time_dependence():
    model = _tiny(in_chans=1)
    x = torch.randn(2, 1, 16, 16)
    out = model(x, torch.tensor([0, 500]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert not torch.allclose(model(x, 3), model(x, 900))
        assert torch.allclose(model(x, 7), model(x, torch.tensor([7, 7])))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(num_classes=4, head_dim=8), dict(widths=(16, 32, 32), depth=2, attn_resolutions=(16, 4))],
    ids=["plain", "classes-heads", "three-levels"],
)
def test_parity_with_diffusers_unet2dmodel(kw):
    pytest.importorskip("diffusers")
    model = _randomise(_tiny(**kw)).eval()
    ref = to_diffusers(model).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 999])
    y = torch.tensor([0, 3]) if kw.get("num_classes") else None
    with torch.no_grad():
        ours = model(x, t, y)
        theirs = ref(x, t, class_labels=y).sample
    assert (ours - theirs).abs().max() <= 1e-4
    # and back: diffusers -> tessera gives the same weights
    back = from_diffusers(ref)
    assert back.config == model.config
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())


def test_state_dict_round_trip_and_checkpoint_converter(tmp_path):
    from safetensors.torch import save_file

    model = _tiny(num_classes=2)
    theirs = state_dict_to_diffusers(model.state_dict())
    assert any(k.endswith("attentions.0.to_q.weight") for k in theirs)
    assert not any("qkv" in k for k in theirs)
    back = state_dict_from_diffusers(theirs)
    assert set(back) == set(model.state_dict())
    # old diffusers attention names
    old = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in theirs.items()}
    assert set(state_dict_from_diffusers(old)) == set(back)
    # load_checkpoint detects the diffusers layout through the "unet" converter
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(tmp_path / "d.safetensors"))
    fresh = load_checkpoint(_tiny(num_classes=2), tmp_path / "d.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


@pytest.mark.slow
def test_save_pretrained_round_trip(tmp_path):
    model = _tiny().eval()
    model.save_pretrained(tmp_path / "unet")
    fresh = load_checkpoint(_tiny().eval(), tmp_path / "unet")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 5), fresh(x, 5))


def test_cifar10_preset_has_35_7m_parameters():
    model = unet_ddpm_cifar10()
    n = sum(p.numel() for p in model.parameters())
    assert n == 35_746_307  # the paper's "35.7M"; diffusers' google/ddpm-cifar10-32 has the same count
    cfg = to_diffusers_config(model.config)
    assert cfg["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert cfg["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    assert config_from_diffusers(cfg) == model.config


@pytest.mark.slow
def test_digits_preset_forward():
    model = tessera.create_model("unet_digits").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32), torch.tensor([0, 999])).shape == (2, 1, 32, 32)


def test_bad_inputs_raise_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 3, 15, 16), 0)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 16, 16), 0)
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 16, 16), 0)
    with pytest.raises(ValueError, match="class-conditional"):
        _tiny(num_classes=3)(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 16, 16), 0, torch.tensor([1]))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(widths=(20, 40))
    with pytest.raises(ValueError, match="img_size 20 is not divisible"):
        UNetConfig(img_size=20)
    with pytest.raises(ValueError, match="valid fields"):
        tessera.create_model("unet_digits", width=3)
    with pytest.raises(ValueError, match="unknown model 'unet_huge'"):
        tessera.create_model("unet_huge")
    with pytest.raises(ValueError, match="flip_sin_to_cos"):
        config_from_diffusers({**to_diffusers_config(model.config), "flip_sin_to_cos": True})


def test_create_unet_is_a_deprecated_alias_of_create_model():
    with pytest.warns(DeprecationWarning, match="create_model"):
        model = create_unet("unet_digits", widths=(8, 16, 16), norm_groups=4)
    assert model.arch == "unet_digits" and model.config.widths == (8, 16, 16)
    assert tessera.model_kinds("unet_digits") == ("denoiser",)
