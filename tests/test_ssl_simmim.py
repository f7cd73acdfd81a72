"""SimMIM: mask generator, loss, parity with transformers, bad input."""

from __future__ import annotations

import pytest
import torch

import tessera
from tessera.ssl.masking import block_mask, num_masked
from tessera.ssl.simmim import SimMIM, SimMIMConfig

TINY_VIT = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def tiny_simmim(**kw) -> SimMIM:
    kw.setdefault("encoder_args", TINY_VIT)
    kw.setdefault("mask_patch_size", 8)
    return tessera.create_model("simmim_vit_base_patch16_224", **kw)


def test_official_mask_count_and_blocks():
    assert num_masked(36, 0.6) == 22  # 192 px, 32-px mask patches
    assert num_masked(49, 0.6) == 30
    g = torch.Generator().manual_seed(1)
    mask = block_mask(3, (48, 48), 8, 0.6, generator=g)  # Swin at 192: patch 4, mask patch 32
    assert mask.shape == (3, 48 * 48) and mask.dtype == torch.bool
    grid = mask.view(3, 48, 48).float()
    blocks = grid.view(3, 6, 8, 6, 8)
    # Every 8 x 8 block of patches is all masked or all visible; 22 blocks per image.
    assert torch.all((blocks.amin(dim=(2, 4)) == blocks.amax(dim=(2, 4))))
    assert blocks.amax(dim=(2, 4)).sum(dim=(1, 2)).tolist() == [22.0] * 3
    assert not torch.equal(mask[0], mask[1])


def test_loss_is_l1_over_masked_pixels_only():
    model = tiny_simmim().eval()
    x, mask = model.example_inputs(2)
    with torch.no_grad():
        out = model(x, mask)
        # Change the visible pixels of the *target* only: the loss must not move ...
        rec = out.reconstruction
        m = mask.view(2, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(x)
        manual = (rec - x).abs()[m].mean()
    torch.testing.assert_close(out.loss, manual, rtol=1e-4, atol=1e-6)
    assert out.reconstruction.shape == x.shape
    assert out.mean_fill_loss > 0


def test_a_drawn_mask_follows_the_global_seed():
    model = tiny_simmim()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    a = model(x).mask
    torch.manual_seed(3)
    b = model(x).mask
    assert torch.equal(a, b) and a.sum(1).tolist() == [40, 40]  # 10 of 16 blocks x 4 patches


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m: torch.zeros(2, 63, dtype=torch.bool), "shape"),
        (lambda m: torch.zeros(2, 64), "bool"),
        (lambda m: torch.zeros(3, 64, dtype=torch.bool), "shape"),
    ],
)
def test_bad_mask_is_a_clear_error(bad, match):
    model = tiny_simmim()
    x, _ = model.example_inputs(2)
    with pytest.raises(ValueError, match=match):
        model(x, bad(model))


def test_mask_as_grid_is_accepted():
    model = tiny_simmim().eval()
    x, mask = model.example_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask.view(2, 8, 8)).loss, model(x, mask).loss)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_open_unit_interval(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        SimMIMConfig(mask_ratio=ratio)


def test_mask_patch_not_a_multiple_of_the_model_patch():
    with pytest.raises(ValueError, match="multiple of the encoder's patch size 4"):
        tiny_simmim(mask_patch_size=6)
    with pytest.raises(ValueError, match="not a multiple of mask_patch_size"):
        tiny_simmim(mask_patch_size=12)


def test_an_encoder_without_the_api_is_a_clear_error():
    with pytest.raises(ValueError, match="not an encoder"):
        tessera.create_model("simmim_vit_base_patch16_224", encoder="unet_digits")
    with pytest.raises(ValueError, match="unknown model"):
        tessera.create_model("simmim_vit_base_patch16_224", encoder="vit_no_such")
    from tessera.ssl.encoder import check_encoder

    with pytest.raises(TypeError, match="forward_tokens"):
        check_encoder(torch.nn.Linear(2, 2))


def test_parity_with_transformers_vit_masked_image_modeling(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, layer_norm_eps=1e-6, encoder_stride=4,
        hidden_act="gelu", qkv_bias=True,
    )
    torch.manual_seed(0)
    hf = transformers.ViTForMaskedImageModeling(cfg).eval()
    with torch.no_grad():  # a non-zero mask token, so that a lost token would show
        hf.vit.embeddings.mask_token.normal_()
    hf.save_pretrained(tmp_path)
    ours = tessera.create_model(
        "simmim_vit_base_patch16_224", checkpoint=tmp_path, encoder_args=TINY_VIT, mask_patch_size=8
    ).eval()
    x, mask = ours.example_inputs(2)
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask)
        out = ours(x, mask)
    torch.testing.assert_close(out.reconstruction, ref.reconstruction, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-4, atol=1e-4)


def test_parity_with_transformers_swin_masked_image_modeling(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
        window_size=4, encoder_stride=8, hidden_act="gelu", drop_path_rate=0.0, layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    hf = transformers.SwinForMaskedImageModeling(cfg).eval()
    with torch.no_grad():
        hf.swin.embeddings.mask_token.normal_()
    hf.save_pretrained(tmp_path)
    enc = dict(img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
               drop_path_rate=0.0)
    ours = tessera.create_model(
        "simmim_swin_tiny_patch4_window7_224", checkpoint=tmp_path, encoder_args=enc, mask_patch_size=8
    ).eval()
    assert ours.stride == 8
    x, mask = ours.example_inputs(2)
    assert mask.shape == (2, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask)
        out = ours(x, mask)
    torch.testing.assert_close(out.reconstruction, ref.reconstruction, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-4, atol=1e-4)


def test_paper_swin_setting_masks_22_of_36_blocks():
    model = tessera.create_model(
        "simmim_swin_base_patch4_window6_192",
        encoder_args=dict(img_size=192, window_size=6, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    )
    mask = model.random_mask(2, (192, 192), generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 48 * 48) and model.num_masked_blocks((192, 192)) == 22
    assert mask.sum(1).tolist() == [22 * 64, 22 * 64]  # each block is 8 x 8 model patches
