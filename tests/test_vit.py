"""ViT / DeiT beyond the registry contract: position-encoding options, heads,
resolution changes, the encoder API, figures and bad input."""

import pytest
import torch

import tessera
from tessera.io.checkpoint import CheckpointError
from tessera.layers import resample_abs_pos_embed, resize_rel_pos_table
from tessera.models.vit import ViTConfig, patch_grid_bias

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def vit(name="vit_small_patch16_224", **kw):
    return tessera.create_model(name, **{**TINY, **kw}).eval()


@pytest.mark.parametrize(
    "options",
    [
        dict(pos_embed="sincos"),
        dict(pos_embed="none"),
        dict(rel_pos_bias=True),
        dict(hybrid_stem=True),
        dict(pre_logits_dim=24),
        dict(global_pool="avg"),
        dict(global_pool="avg", class_token=False),
        dict(distilled=True, rel_pos_bias=True, pos_embed="sincos"),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_forward_backward(options, tmp_path):
    model = vit(**options).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval()
    folder = model.save_pretrained(tmp_path / "m")
    again = tessera.create_model(model.arch, checkpoint=folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


def test_sincos_is_fixed_and_not_stored():
    model = vit(pos_embed="sincos")
    assert "pos_embed" not in model.state_dict() and "pos_embed" not in dict(model.named_parameters())
    pe = model.pos_embed[0]
    assert torch.all(pe[:1] == 0)  # the CLS token has no position
    # sin^2 + cos^2 = 1 per frequency: each patch row has squared norm C/2.
    torch.testing.assert_close(pe[1:].square().sum(-1), torch.full((16,), 16.0))


def test_no_pos_embed_is_permutation_equivariant():
    model = vit(pos_embed="none", global_pool="avg")
    x = torch.randn(1, 3, 32, 32)
    # Swapping the two halves of the image swaps whole patches: the token set is unchanged.
    swapped = torch.cat([x[..., 16:, :], x[..., :16, :]], dim=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(swapped), atol=1e-5, rtol=1e-5)
    with_pos = vit(global_pool="avg")
    with torch.no_grad():
        assert not torch.allclose(with_pos(x), with_pos(swapped), atol=1e-4)


def test_relative_bias_prefix_zero_and_offsets():
    model = vit(rel_pos_bias=True, distilled=True)
    rpb = model.blocks[0].rel_pos_bias
    with torch.no_grad():
        rpb.table.normal_()
    bias = patch_grid_bias(rpb, (4, 4), 2)  # (h, 2 + 16, 2 + 16)
    assert bias.shape == (2, 18, 18)
    assert torch.all(bias[:, :2] == 0) and torch.all(bias[:, :, :2] == 0)
    # Same offset -> same bias: patch (0,0)->(1,1) equals (2,2)->(3,3).
    assert torch.equal(bias[:, 2 + 0, 2 + 5], bias[:, 2 + 10, 2 + 15])
    assert not torch.equal(bias[:, 2 + 0, 2 + 5], bias[:, 2 + 0, 2 + 6])
    # Another grid: the table is resized, offsets recomputed.
    assert patch_grid_bias(rpb, (6, 5), 2).shape == (2, 32, 32)


def test_distilled_inference_is_mean_of_heads():
    model = vit("deit_small_distilled_patch16_224")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cls_logits, dist_logits = model.forward_distill(x)
        torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
        # The mean ranks classes like the notes' sum before the softmax.
        assert torch.equal(model(x).argmax(-1), (cls_logits + dist_logits).argmax(-1))
    assert model.num_prefix_tokens == 2 and model.pos_embed.shape == (1, 18, 32)
    with pytest.raises(ValueError, match="distilled=True"):
        vit().forward_distill(x)


def test_dynamic_size_and_interpolation_agree():
    small = vit(dynamic_img_size=True)
    with torch.no_grad():
        small.pos_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    fixed = vit(dynamic_img_size=False)
    fixed.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(small(x), fixed(x), rtol=0, atol=0)  # native size: nothing resampled
    # Rectangular input: resampled on the fly == a model built for that size with resampled weights.
    state = small.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (5, 7), (4, 4), 1)
    rect = vit(img_size=(40, 56))
    rect.load_state_dict(state)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(small(x), rect(x))
    # The CLS entry is kept as it is.
    assert torch.equal(state["pos_embed"][:, :1], small.pos_embed[:, :1])


def test_checkpoint_of_other_resolution_is_resampled(tmp_path):
    model = vit()
    folder = model.save_pretrained(tmp_path / "m")
    big = tessera.create_model(model.arch, img_size=48, checkpoint=folder)
    assert big.pos_embed.shape == (1, 1 + 36, 32)
    expected = resample_abs_pos_embed(model.pos_embed, (6, 6), (4, 4), 1)
    torch.testing.assert_close(big.pos_embed, expected)
    rel = vit(rel_pos_bias=True)
    folder = rel.save_pretrained(tmp_path / "r")
    big = tessera.create_model(rel.arch, img_size=48, checkpoint=folder)
    assert big.blocks[0].rel_pos_bias.table.shape == (11 * 11, 2)


def test_checkpoint_of_a_non_square_grid_is_resampled_with_its_saved_grid(tmp_path):
    """A tessera checkpoint knows its image size: a 4 x 6 grid is not mistaken for a square one."""
    model = vit(img_size=(32, 48))  # patch 8: a 4 x 6 grid
    folder = model.save_pretrained(tmp_path / "m")
    tall = tessera.create_model(model.arch, img_size=(48, 32), checkpoint=folder)  # 6 x 4
    expected = resample_abs_pos_embed(model.pos_embed, (6, 4), (4, 6), 1)
    torch.testing.assert_close(tall.pos_embed, expected)
    rel = vit(img_size=(32, 48), rel_pos_bias=True)
    folder = rel.save_pretrained(tmp_path / "r")
    big = tessera.create_model(rel.arch, img_size=(48, 48), checkpoint=folder)  # 6 x 6
    table = rel.blocks[0].rel_pos_bias.table.detach()  # (2*4 - 1)(2*6 - 1) = 77 offsets
    torch.testing.assert_close(big.blocks[0].rel_pos_bias.table, resize_rel_pos_table(table, (6, 6), (4, 6)))


def test_encoder_api():
    model = vit(depth=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        assert tokens.shape == (2, 1 + 16, 32)
        inter, prefix = model.forward_intermediates(x, [0, -1], norm=True, return_prefix_tokens=True)
        assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
        assert [t.shape for t in prefix] == [(2, 1, 32)] * 2
        feats = model.forward_features(x)
        torch.testing.assert_close(prefix[-1], feats[:, :1])
        torch.testing.assert_close(inter[-1].flatten(2).transpose(1, 2), feats[:, 1:])
        assert len(model.forward_intermediates(x, 2)) == 2
        assert len(model.forward_intermediates(x)) == len(model.feature_info) == 3
        assert not torch.allclose(inter[0], inter[1])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, [3])
    with pytest.raises(ValueError, match="use_mask_token=True"):
        model.forward_tokens(x, mask=torch.zeros(2, 16, dtype=torch.bool))


def test_reset_classifier_updates_config(tmp_path):
    model = vit("deit_tiny_distilled_patch16_224")
    model.reset_classifier(7)
    assert model.config.num_classes == 7 and model.head_dist.out_features == 7
    again = tessera.create_model(model.arch, checkpoint=model.save_pretrained(tmp_path / "m"))
    assert again.head.out_features == 7


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ViTConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="class_token"):
        ViTConfig(class_token=False)
    with pytest.raises(ValueError, match="distilled"):
        ViTConfig(distilled=True, global_pool="avg")
    with pytest.raises(ValueError, match="pos_embed"):
        ViTConfig(pos_embed="rope")
    with pytest.raises(ValueError, match="hybrid_stem"):
        ViTConfig(patch_size=14, img_size=224, hybrid_stem=True)


def test_bad_input_sizes():
    model = vit()
    with pytest.raises(ValueError, match=r"dynamic_img_size=True"):
        model(torch.randn(1, 3, 36, 36))  # not a patch multiple
    with pytest.raises(ValueError, match=r"takes 32x32 images, got 48x48.*dynamic_img_size=True"):
        model(torch.randn(1, 3, 48, 48))  # a multiple, but not the configured size
    dyn = vit(dynamic_img_size=True)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        dyn(torch.randn(1, 3, 36, 40))
    with pytest.raises(ValueError, match="channels"):
        vit(hybrid_stem=True)(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one patch"):
        dyn(torch.randn(1, 3, 4, 4))


def test_checkpoint_shape_mismatch_names_first_key(tmp_path):
    folder = vit().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.mlp\.fc1\.bias' has shape \(128,\) in the checkpoint, \(64,\) in the model"):
        tessera.create_model("vit_small_patch16_224", checkpoint=folder, mlp_ratio=2.0)


def test_registry_names():
    names = set(tessera.list_models("vit_*")) | set(tessera.list_models("deit_*"))
    for size in ("tiny", "small", "base", "large"):
        assert {f"vit_{size}_patch16_224", f"vit_{size}_patch16_384"} <= names
    assert {"vit_base_patch32_224", "vit_base_patch32_384", "vit_large_patch32_224", "vit_large_patch32_384",
            "vit_huge_patch14_224", "deit_base_patch16_384", "deit_base_distilled_patch16_384"} <= names
    for size in ("tiny", "small", "base"):
        assert {f"deit_{size}_patch16_224", f"deit_{size}_distilled_patch16_224"} <= names


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("deit_small_patch16_224", 22e6, 4.6e9),  # Swin paper, Table 1(a); the others via `tessera info`
    ],
)
def test_profile_matches_paper(name, params, macs):
    p, m = tessera.profile(tessera.create_model(name), (3, *[int(name[-3:])] * 2))
    assert abs(p / params - 1) < 0.02 and abs(m / macs - 1) < 0.02, (p, m)


def test_a_checkpoint_without_mask_token_loads_into_a_model_with_one(tmp_path):
    plain = vit(depth=1)
    plain.save_pretrained(tmp_path)
    masked = tessera.create_model("vit_base_patch16_224", checkpoint=tmp_path, use_mask_token=True)
    torch.testing.assert_close(masked.pos_embed, plain.pos_embed)
    assert masked.mask_token is not None
