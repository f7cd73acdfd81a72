"""The protocol of every kind (`tessera.core.protocols`), run over every registry entry in its tiny configuration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tessera
from tessera.core import tiny_overrides

ALL_NAMES = tessera.list_models()


def _representatives(names: list[str]) -> list[str]:
    """One name per distinct tiny model: names whose tiny variants have the same class, kinds and
    tensors (ViT-S and ViT-B shrunk to one tiny size; variants differing only in drop rates)
    would run the same tests twice. Every name is still built by the test below."""
    seen: dict[tuple, str] = {}
    for name in names:
        model = tessera.core.get_builder(name)(**tiny_overrides(name))
        shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
        key = (type(model), shapes, tessera.model_kinds(name))
        seen.setdefault(key, name)
    return sorted(seen.values())


MODELS = _representatives(ALL_NAMES)


def of_kind(kind: str) -> list[str]:
    return [n for n in MODELS if kind in tessera.model_kinds(n)]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_name_builds_its_tiny_variant_and_records_its_name(name):
    model = tessera.core.get_builder(name)(**tiny_overrides(name))
    assert model.arch == name
    assert set(tessera.model_kinds(name)) <= set(tessera.KINDS)


def tiny(name: str, **kw):
    model = tessera.create_model(name, **{**tiny_overrides(name), **kw})
    return model.eval()


def inputs(model, n: int = 2) -> tuple:
    torch.manual_seed(0)
    return model.example_inputs(n)


def float_tensors(out) -> list[torch.Tensor]:
    """Every floating-point tensor in a model output (tensor, tuple, dict, dataclass, NamedTuple)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if dataclasses.is_dataclass(out):
        out = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in float_tensors(o)]
    return []


def scalar(out) -> torch.Tensor:
    """A scalar depending on every float output: the loss when the output has one."""
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    return sum(t.float().square().mean() for t in float_tensors(out))


# ------------------------------------------------------------------ every kind


@pytest.mark.parametrize("name", MODELS)
def test_forward_finite_and_deterministic_in_eval(name):
    model = tiny(name)
    x = inputs(model)
    with torch.no_grad():
        first, second = float_tensors(model(*x)), float_tensors(model(*x))
    assert first, f"{name}: forward returned no floating-point tensor"
    for a, b in zip(first, second):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    scalar(model(*inputs(model))).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_round_trip(name, tmp_path):
    model = tiny(name)
    x = inputs(model)
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    again = tessera.create_model(name, checkpoint=folder).eval()
    with torch.no_grad():
        for a, b in zip(float_tensors(model(*x)), float_tensors(again(*x))):
            assert torch.equal(a, b)
    # Derived buffers (position indices, masks, schedules) are not stored.
    from safetensors.torch import load_file

    stored = set(load_file(folder / "model.safetensors"))
    assert stored == set(model.state_dict())
    derived = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    assert not stored & derived


@pytest.mark.parametrize("name", MODELS)
def test_a_directly_built_model_saves_a_folder_that_loads_by_name(name, tmp_path):
    model = tessera.core.get_builder(name)(**tiny_overrides(name))
    assert model.arch == name
    model.save_pretrained(tmp_path)
    assert tessera.create_model(name, checkpoint=tmp_path).config == model.config


@pytest.mark.parametrize("name", MODELS)
def test_config_rejects_unknown_field(name):
    with pytest.raises(ValueError, match="no_such_field"):
        tessera.create_model(name, **tiny_overrides(name), no_such_field=1)


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_the_same_gradients_and_recomputes(name):
    torch.manual_seed(0)
    model = tiny(name)  # eval: no dropout, so both passes draw nothing
    x = inputs(model)
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    hooks = [m.register_forward_pre_hook(count) for m in model.modules()]
    scalar(model(*x)).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    plain_calls, calls["n"] = calls["n"], 0
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    scalar(model(*x)).backward()
    for h in hooks:
        h.remove()
    assert calls["n"] > plain_calls, "set_grad_checkpointing(True) recomputed nothing in backward"
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_every_name_has_a_known_kind():
    assert set(ALL_NAMES) == {n for k in tessera.KINDS for n in tessera.list_models(kind=k)}


# ------------------------------------------------------------------ classifier


@pytest.mark.parametrize("name", of_kind("classifier"))
def test_classifier_logits_features_and_head(name):
    model = tiny(name)
    (x,) = inputs(model)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats), logits)
        pre = model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, model.config.num_classes)
    assert pre.shape == (2, model.num_features)


@pytest.mark.parametrize("name", of_kind("classifier"))
def test_reset_classifier(name):
    model = tiny(name)
    (x,) = inputs(model)
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", of_kind("classifier") + of_kind("dense"))
def test_bad_image_input_is_a_clear_error(name):
    model = tiny(name)
    (x,) = inputs(model)
    with pytest.raises(ValueError, match="4-D"):
        model(x[0])
    with pytest.raises(ValueError, match="channels"):
        model(torch.cat([x, x], dim=1))
    with pytest.raises(ValueError, match="floating-point"):
        model((x * 100).to(torch.int64))


# ------------------------------------------------------------------ encoder


def tokens_to_map(model, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h w, C) -> (B, C, h, w)."""
    patches = tokens[:, model.num_prefix_tokens :]
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *hw)


@pytest.mark.parametrize("name", of_kind("encoder"))
def test_encoder_intermediates_match_feature_info_and_features(name):
    model = tiny(name)
    (x,) = inputs(model)
    H, W = x.shape[-2:]
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        last = model.forward_intermediates(x, indices=[-1], norm=True)[0]
        tokens = model.forward_tokens(x)
    assert len(maps) == len(model.feature_info)
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape == (2, info["num_chs"], H // info["reduction"], W // info["reduction"])
    torch.testing.assert_close(last, tokens_to_map(model, tokens, last.shape[-2:]))
    assert tokens.shape[1] == model.num_prefix_tokens + last.shape[-2] * last.shape[-1]


@pytest.mark.parametrize("name", of_kind("encoder"))
def test_encoder_prefix_tokens_come_with_the_maps(name):
    model = tiny(name)
    (x,) = inputs(model)
    with torch.no_grad():
        maps, prefix = model.forward_intermediates(x, indices=[0, -1], return_prefix_tokens=True)
    assert len(maps) == len(prefix) == 2
    for fmap, p in zip(maps, prefix):
        assert p.shape == (2, model.num_prefix_tokens, fmap.shape[1])


@pytest.mark.parametrize("name", of_kind("encoder"))
def test_mask_token_replaces_only_masked_patches(name):
    model = tiny(name, use_mask_token=True)
    (x,) = inputs(model)
    P = model.patch_size
    gh, gw = x.shape[-2] // P, x.shape[-1] // P
    mask = torch.zeros(2, gh * gw, dtype=torch.bool)
    mask[:, ::3] = True
    everything = torch.ones_like(mask)
    with torch.no_grad():
        # With every patch masked the pixels no longer matter: each embedding is the token
        # (a whole-image check, so that overlapping stems such as MViT's 7x7 conv qualify).
        all_masked = model.forward_tokens(x, mask=everything)
        torch.testing.assert_close(model.forward_tokens(torch.randn_like(x), mask=everything), all_masked)
        masked = model.forward_tokens(x, mask=mask)
        plain = model.forward_tokens(x)
        torch.testing.assert_close(model.forward_tokens(x, mask=torch.zeros_like(mask)), plain)
    assert not torch.allclose(masked, plain)
    with pytest.raises(ValueError, match="mask"):
        model.forward_tokens(x, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="mask"):
        tiny(name).forward_tokens(x, mask=mask)  # built without a mask token


# ------------------------------------------------------------------ other kinds


@pytest.mark.parametrize("name", of_kind("denoiser"))
def test_denoiser_output_is_shaped_like_its_input(name):
    model = tiny(name)
    x = inputs(model)
    with torch.no_grad():
        assert model(*x).shape == x[0].shape


@pytest.mark.parametrize("name", of_kind("tokenizer"))
def test_tokenizer_encode_decode_forward(name):
    model = tiny(name)
    (x,) = inputs(model)
    with torch.no_grad():
        out = model(x)
        y = model.decode(model.encode(x))
    assert out.reconstruction.shape == x.shape and y.shape == x.shape
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", of_kind("energy"))
def test_energy_is_one_scalar_per_sample(name):
    model = tiny(name)
    x = inputs(model)
    with torch.no_grad():
        e = model.energy(*x)
    assert e.shape == (x[0].shape[0],)
    torch.testing.assert_close(model(*x), e)


@pytest.mark.parametrize("name", of_kind("dense"))
def test_dense_output_at_input_resolution(name):
    model = tiny(name)
    (x,) = inputs(model)
    with torch.no_grad():
        y = model(x)
    assert y.ndim == 4 and y.shape[0] == 2 and y.shape[-2:] == x.shape[-2:]


@pytest.mark.parametrize("name", of_kind("wrapper"))
def test_wrapper_gives_a_finite_scalar_loss(name):
    model = tiny(name).train()
    out = model(*inputs(model))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
