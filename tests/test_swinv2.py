"""Swin-V2: parity with transformers' Swinv2ForImageClassification, window transfer, figures, errors."""

import pytest
import torch

import tessera
from tessera.models.swinv2 import SwinV2Config, log_spaced_coords

TINY = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
            pretrained_window_sizes=(0, 0), num_classes=5, drop_path_rate=0.0)


def hf_model(window=4, pretrained=(0, 0), image_size=32):
    from transformers import Swinv2Config, Swinv2ForImageClassification

    cfg = Swinv2Config(image_size=image_size, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2],
                       num_heads=[2, 4], window_size=window, pretrained_window_sizes=list(pretrained),
                       num_labels=5, drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = Swinv2ForImageClassification(cfg).eval()
    with torch.no_grad():  # larger random weights: a swapped q/k or a lost bias cannot hide
        for name, p in model.named_parameters():
            if "logit_scale" not in name:
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("window,pretrained", [(4, (0, 0)), (4, (8, 8))])
def test_transformers_checkpoint_gives_the_same_logits(tmp_path, window, pretrained):
    hf = hf_model(window, pretrained)
    hf.save_pretrained(tmp_path)
    ours = tessera.create_model(
        "swinv2_tiny_window8_256", checkpoint=tmp_path, **{**TINY, "window_size": window, "pretrained_window_sizes": pretrained}
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-4)


def test_a_checkpoint_moves_to_another_window_through_the_cpb(tmp_path):
    """Trained at window 4, run at window 8 (32 -> 64 px): the same as transformers built that way."""
    small = hf_model(4, (0, 0))
    small.save_pretrained(tmp_path / "w4")
    big = hf_model(8, (4, 4), image_size=64)
    big.load_state_dict(small.state_dict())
    ours = tessera.create_model(
        "swinv2_tiny_window8_256", checkpoint=tmp_path / "w4",
        **{**TINY, "img_size": 64, "window_size": 8, "pretrained_window_sizes": (4, 4)},
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), big(pixel_values=x).logits, rtol=0, atol=1e-4)


def test_timm_layout_round_trip(tmp_path):
    model = tessera.create_model("swinv2_tiny_window8_256", **TINY).eval()
    timm_state = {}
    for k, v in model.state_dict().items():
        k = k.replace("stages.", "layers.").replace("patch_merge.", "downsample.").replace("head.", "head.fc.")
        timm_state[k] = v
    timm_state["layers.0.blocks.0.attn.k_bias"] = torch.zeros(16)  # timm's zero buffer
    torch.save(timm_state, tmp_path / "timm.pth")
    again = tessera.create_model("swinv2_tiny_window8_256", checkpoint=tmp_path / "timm.pth", **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_log_spaced_coordinates_match_the_paper():
    coords = log_spaced_coords((3, 3), (0, 0)).reshape(5, 5, 2)
    # offsets -2..2 over M - 1 = 2, times 8 -> -8..8; log2(1 + 8) / log2(8)
    assert coords[0, 2, 0].item() == pytest.approx(-torch.log2(torch.tensor(9.0)).item() / 3)
    assert coords[2, 2].abs().sum() == 0
    assert coords[2, 3, 1].item() == pytest.approx(torch.log2(torch.tensor(5.0)).item() / 3)


@pytest.mark.parametrize(
    "name,params,macs",
    [("swinv2_tiny_window8_256", 28e6, 5.9e9), ("swinv2_small_window8_256", 50e6, 11.5e9),
     ("swinv2_base_window8_256", 88e6, 20.3e9)],
)
@pytest.mark.slow
def test_params_and_macs_match_the_paper(name, params, macs):
    p, m = tessera.profile(tessera.create_model(name), (3, 256, 256))
    assert abs(p / params - 1) < 0.02 and abs(m / macs - 1) < 0.02


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="pretrained_window_sizes"):
        SwinV2Config(pretrained_window_sizes=(1, 0, 0, 0))
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinV2Config(depths=(2, 2))
    with pytest.raises(ValueError, match="fast path"):
        tessera.create_model("swinv2_tiny_window8_256", **TINY).set_fast_path(True)


@pytest.mark.slow
def test_full_size_swinv2_tiny_gives_the_transformers_logits(tmp_path):
    from transformers import Swinv2Config, Swinv2ForImageClassification

    torch.manual_seed(0)
    cfg = Swinv2Config(image_size=256, window_size=8, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                       num_labels=1000)
    hf = Swinv2ForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = tessera.create_model("swinv2_tiny_window8_256", checkpoint=tmp_path).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=0, atol=1e-4)
