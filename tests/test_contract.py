"""The model contract, run over every registry entry in its tiny configuration."""

import pytest
import torch

import tessera
from tessera.models import tiny_overrides

MODELS = tessera.list_models()


def tiny(name, **kw):
    model = tessera.create_model(name, **{**tiny_overrides(name), **kw})
    return model.eval()


def batch(model, n=2):
    c, h, w = model.input_size
    return torch.randn(n, c, h, w)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_finite_deterministic(name):
    model = tiny(name)
    x = batch(model)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
    assert y1.shape == (2, model.config.num_classes)
    assert torch.isfinite(y1).all()
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("name", MODELS)
def test_forward_is_features_then_head(name):
    model = tiny(name)
    x = batch(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(logits, model(x))
    assert pre.shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    model = tiny(name)
    x = batch(model)
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    model(batch(model)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_round_trip(name, tmp_path):
    model = tiny(name)
    x = batch(model)
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    again = tessera.create_model(name, checkpoint=folder).eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # Derived buffers (position indices, masks) are not stored.
    from safetensors.torch import load_file

    stored = set(load_file(folder / "model.safetensors"))
    assert stored == {n for n, _ in model.named_parameters()} | {
        n for n, b in model.named_buffers() if n in model.state_dict()
    }


@pytest.mark.parametrize("name", MODELS)
def test_config_rejects_unknown_field(name):
    with pytest.raises(ValueError, match="no_such_field"):
        tessera.create_model(name, **tiny_overrides(name), no_such_field=1)


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_is_a_clear_error(name):
    model = tiny(name)
    x = batch(model)
    with pytest.raises(ValueError, match="4-D"):
        model(x[0])
    with pytest.raises(ValueError, match="channels"):
        model(torch.cat([x, x], dim=1))
    with pytest.raises(ValueError, match="floating-point"):
        model((x * 100).to(torch.int64))


@pytest.mark.parametrize("name", MODELS)
def test_hierarchical_features(name):
    model = tiny(name)
    if not hasattr(model, "features"):
        pytest.skip("not a hierarchical backbone")
    maps = model.features(batch(model))
    assert len(maps) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.ndim == 4 and fmap.shape[:2] == (2, info["num_chs"])
