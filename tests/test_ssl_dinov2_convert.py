"""transformers' DINOv2 backbone (layer scale, register tokens) loaded into tessera's ViT: same features."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tessera.ssl.dinov2_convert import load_dinov2_transformers  # noqa: E402

SMALL = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4)


def _randomise(model: torch.nn.Module) -> None:
    """Non-trivial layer scales, tokens and positions (the defaults would hide a missing one)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "token" in name or "position" in name:
                p.normal_(0, 0.5)


# transformers' with-registers model resamples its positions with antialias=True (the official
# reg4 release's setting), the original without: both are followed.
@pytest.mark.parametrize("registers", [0, 4])
def test_features_match_at_native_and_other_size(tmp_path, registers):
    torch.manual_seed(0)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=registers, layerscale_value=1e-5)
        hf = transformers.Dinov2WithRegistersModel(cfg).eval()
    else:
        hf = transformers.Dinov2Model(transformers.Dinov2Config(**SMALL, layerscale_value=1e-5)).eval()
    _randomise(hf)
    hf.save_pretrained(tmp_path)
    ours = load_dinov2_transformers(tmp_path)
    assert ours.num_prefix_tokens == 1 + registers and ours.config.layer_scale_init == 1e-5
    assert ours.config.pos_embed_antialias == bool(registers)
    for size in (32, 48):  # native (8x8 grid) and position interpolation (12x12)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ref = hf(pixel_values=x).last_hidden_state
            got = ours.forward_tokens(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_mask_token_is_loaded_for_ibot(tmp_path):
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**SMALL)).eval()
    _randomise(hf)
    hf.save_pretrained(tmp_path)
    ours = load_dinov2_transformers(tmp_path, use_mask_token=True)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::5] = True
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=mask).last_hidden_state
        got = ours.forward_tokens(x, mask)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_not_a_dinov2_folder(tmp_path):
    hf = transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not DINOv2"):
        load_dinov2_transformers(tmp_path)


def test_create_model_reads_a_dinov2_folder_through_the_vit_converter(tmp_path):
    """The public entry point: the ViT family's converter recognises the layout; register tokens
    have no position, so a larger model's grid is resampled past CLS only."""
    import tessera

    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4, layerscale_value=1e-5)
    hf = transformers.Dinov2WithRegistersModel(cfg).eval()
    _randomise(hf)
    hf.save_pretrained(tmp_path)
    reference = load_dinov2_transformers(tmp_path)
    kw = {k: v for k, v in vars(reference.config).items() if k not in ("img_size", "num_classes")}
    ours = tessera.create_model("vit_small_patch16_224", checkpoint=tmp_path, num_classes=0, img_size=32, **kw).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_tokens(x), hf(pixel_values=x).last_hidden_state, rtol=1e-4, atol=1e-4)
        bigger = tessera.create_model("vit_small_patch16_224", checkpoint=tmp_path, num_classes=0, img_size=48, **kw)
        assert bigger.pos_embed.shape[1] == 1 + 12 * 12
