"""Dense heads: DPT, FPN, UPerNet and the linear baseline; their checks; parity with transformers."""

from __future__ import annotations

import pytest
import torch

import tessera
from tessera.core import tiny_overrides
from tessera.dense import DPT, PyramidSegmenter, from_transformers, transformers_overrides

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, dynamic_img_size=True)


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return tessera.create_model(name, **{**tiny_overrides(name), **kw}).eval()


# ------------------------------------------------------------------ shapes and structure


@pytest.mark.parametrize("name", ["dpt_vit_base_patch16_384_depth", "upernet_swin_tiny", "fpn_swin_tiny_depth"])
def test_outputs_at_input_resolution_for_any_size(name):
    model = tiny(name)
    with torch.no_grad():
        for size in [(32, 32), (40, 56), (33, 47)]:
            y = model(torch.randn(1, 3, *size))
            assert y.shape[-2:] == size
            if model.config.task == "depth":
                assert y.shape[1] == 1 and (y >= 0).all()
            else:
                assert y.shape[1] == model.config.num_classes


def test_dpt_coarsest_fusion_block_has_no_unused_residual_unit():
    model = tiny("dpt_vit_base_patch16_384_depth")
    assert model.fusion[0].rcu1 is None  # transformers #28292: never run, so never built here
    assert all(block.rcu1 is not None for block in model.fusion[1:])


def test_dpt_reassembles_at_strides_4_8_16_32():
    model = tiny("dpt_vit_base_patch16_384_depth", encoder_args=dict(TINY_VIT, patch_size=16), img_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, prefix = model.encoder.forward_intermediates(x, indices=model.layers, return_prefix_tokens=True)
        sizes = [tuple(re(m, p).shape[-2:]) for re, m, p in zip(model.reassemble, maps, prefix)]
    assert sizes == [(16, 16), (8, 8), (4, 4), (2, 2)]  # 64 / 4, 64 / 8, 64 / 16, 64 / 32


def test_dpt_readout_modes_differ_and_project_needs_a_class_token():
    outs = {}
    x = torch.randn(1, 3, 32, 32)
    for readout in ("ignore", "add", "project"):
        model = tiny("dpt_vit_base_patch16_384_seg", readout=readout)
        with torch.no_grad():
            outs[readout] = model(x)
    assert not torch.allclose(outs["ignore"], outs["add"])
    assert not torch.allclose(outs["add"], outs["project"])
    no_cls = dict(TINY_VIT, class_token=False, global_pool="avg")
    for readout in ("project", "add"):
        with pytest.raises(ValueError, match="class token"):
            tiny("dpt_vit_base_patch16_384_seg", readout=readout, encoder_args=no_cls)
    assert tiny("dpt_vit_base_patch16_384_seg", readout="ignore", encoder_args=no_cls)(x).shape == (1, 5, 32, 32)


def test_bad_encoders_are_clear_errors():
    with pytest.raises(ValueError, match="needs an encoder"):
        tiny("dpt_vit_base_patch16_384_depth", encoder="fpn_swin_tiny")  # a dense model, not an encoder
    with pytest.raises(ValueError, match="plain ViT"):
        tiny("dpt_vit_base_patch16_384_depth", encoder="swin_tiny_patch4_window7_224",
             encoder_args=tiny_overrides("fpn_swin_tiny")["encoder_args"], readout="ignore")
    with pytest.raises(ValueError, match="out of range"):
        tiny("dpt_vit_base_patch16_384_depth", layers=(0, 1, 2, 9))
    with pytest.raises(ValueError, match="unknown model"):
        tiny("upernet_swin_tiny", encoder="swin_tiny_typo")


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="num_classes must be 1"):
        tiny("dpt_vit_base_patch16_384_depth", num_classes=3)
    with pytest.raises(ValueError, match="aux_head"):
        tiny("upernet_swin_tiny_depth", aux_head=True)
    with pytest.raises(ValueError, match="4 layers"):
        tiny("dpt_vit_base_patch16_384_depth", layers=(0, 1, 2))
    with pytest.raises(ValueError, match="decoder"):
        tiny("fpn_swin_tiny", decoder="unet")


def test_auxiliary_heads_give_logits_at_input_resolution():
    x = torch.randn(2, 3, 40, 48)
    for name in ("upernet_swin_tiny", "dpt_vit_base_patch16_384_seg"):
        model = tiny(name, aux_head=True)
        with torch.no_grad():
            out, aux = model.forward_with_aux(x)
        assert out.shape == aux.shape == (2, 5, 40, 48)
        with torch.no_grad():
            assert torch.equal(model(x), out)


def test_pyramid_heads_work_on_a_plain_vit_too():
    model = tiny("fpn_swin_tiny", encoder="vit_base_patch16_224", encoder_args=TINY_VIT, layers=(0, 1, 2, 3))
    assert isinstance(model, PyramidSegmenter)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 5, 32, 48)


def test_linear_baseline_reads_only_the_last_stage():
    model = tiny("linear_swin_tiny")
    assert model.layers == [len(model.encoder.feature_info) - 1] and len(model.level_norms) == 1


def test_encoder_args_survive_a_save_load_round_trip(tmp_path):
    model = tiny("upernet_swin_tiny")
    model.save_pretrained(tmp_path)
    again = tessera.create_model("upernet_swin_tiny", checkpoint=tmp_path)
    assert again.config == model.config and isinstance(again.config.encoder_args["depths"], tuple)


# ------------------------------------------------------------------ transformers parity


def _randomize(model: torch.nn.Module) -> None:
    """Weights of unit-scale outputs (transformers' init gives outputs near 0, which would prove little)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0, 0.1)
            if "position_embeddings" in name or "cls_token" in name:
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)


def _dpt_config(**kw):
    from transformers import DPTConfig

    return DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=64,
        patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16, **kw,
    )


def _load(hf, tmp_path):
    _randomize(hf)
    hf.eval().save_pretrained(tmp_path)
    return from_transformers(tmp_path).eval()


@pytest.mark.slow
def test_dpt_depth_matches_transformers(tmp_path):
    from transformers import DPTForDepthEstimation

    hf = DPTForDepthEstimation(_dpt_config())
    model = _load(hf, tmp_path)
    assert isinstance(model, DPT) and model.config.task == "depth"
    for size in (64, 96):  # native; a 6 x 6 grid whose positions are resampled
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ref = hf(pixel_values=x).predicted_depth[:, None]
            y = model(x)
        assert ref.abs().max() > 0.05  # the comparison is not of zeros
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_dpt_segmentation_and_auxiliary_head_match_transformers(tmp_path):
    from transformers import DPTForSemanticSegmentation

    hf = DPTForSemanticSegmentation(_dpt_config(num_labels=5, readout_type="add", use_batch_norm_in_fusion_residual=True))
    model = _load(hf, tmp_path)
    assert model.config.aux_head and model.config.fusion_batch_norm and model.config.readout == "add"
    for size in (64, 96):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = hf(pixel_values=x, output_hidden_states=True)
            y, aux = model.forward_with_aux(x)
        torch.testing.assert_close(y, out.logits, atol=1e-4, rtol=1e-4)
        # transformers returns no auxiliary logits: rebuild them from its fused features
        hidden = [h for i, h in enumerate(out.hidden_states[1:]) if i in hf.config.backbone_out_indices]
        with torch.no_grad():
            ref_aux = hf.auxiliary_head(hf.neck(hidden)[-1])
        ref_aux = torch.nn.functional.interpolate(ref_aux, size=(size, size), mode="bilinear", align_corners=False)
        torch.testing.assert_close(aux, ref_aux, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_upernet_swin_matches_transformers(tmp_path):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    # Window 2 on patch-2 stages of >= 3 tokens: transformers' SwinBackbone always
    # partitions and shifts, tessera's Swin drops the shift on a stage no larger than its
    # window; both agree whenever every stage is larger than the window.
    backbone = SwinConfig(
        image_size=64, patch_size=2, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    hf = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone, hidden_size=32, auxiliary_channels=16, num_labels=5)
    )
    model = _load(hf, tmp_path)
    assert isinstance(model, PyramidSegmenter) and model.config.aux_head
    for size in ((64, 64), (33, 47)):  # native; padded to patch and window multiples
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ref = hf(pixel_values=x).logits
            features = hf.backbone(x).feature_maps
            ref_aux = torch.nn.functional.interpolate(
                hf.auxiliary_head(features), size=size, mode="bilinear", align_corners=False
            )
            y, aux = model.forward_with_aux(x)
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(aux, ref_aux, atol=1e-4, rtol=1e-4)


def test_transformers_configs_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="DPT-Hybrid"):
        transformers_overrides({"model_type": "dpt", "is_hybrid": True})
    with pytest.raises(ValueError, match="Swin"):
        transformers_overrides({"model_type": "upernet", "backbone_config": {"model_type": "convnext"}})
    with pytest.raises(ValueError, match="not a transformers DPT or UperNet"):
        transformers_overrides({"model_type": "vit"})
    name, ov = transformers_overrides(_dpt_config().to_dict())
    assert name == "dpt_vit_base_patch16_384_depth" and ov["layers"] == (0, 1, 2, 3)


def test_upernet_auxiliary_in_channels_of_the_published_configs_is_read():
    """transformers' Swin-UperNet conversion writes auxiliary_in_channels (384 for Swin-T, as in
    openmmlab/upernet-swin-tiny): the width of level 2, which the auxiliary head reads anyway, so it
    loads; any other width would need a head tessera does not build and is refused (issue 18)."""
    stages = ["stage1", "stage2", "stage3", "stage4"]
    swin_t = {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
              "window_size": 7, "patch_size": 4, "out_features": stages}
    config = {"model_type": "upernet", "backbone_config": swin_t, "auxiliary_in_channels": 384, "num_labels": 150}
    name, ov = transformers_overrides(config)
    assert name == "upernet_swin_tiny" and ov["aux_head"] and ov["aux_index"] == 2
    # stages 2-4 only: level 2 is stage 4 (768 channels)
    _, ov = transformers_overrides({**config, "backbone_config": {**swin_t, "out_features": stages[1:]},
                                    "auxiliary_in_channels": 768})
    assert ov["layers"] == (1, 2, 3)
    with pytest.raises(ValueError, match="auxiliary_in_channels=192"):
        transformers_overrides({**config, "auxiliary_in_channels": 192})


def _one_encoder_per_class() -> list[str]:
    from tessera.core.registry import builder_class

    seen, names = set(), []
    for name in tessera.list_models(kind="encoder"):
        cls = builder_class(name)
        if cls not in seen:
            seen.add(cls)
            names.append(name)
    return names


@pytest.mark.parametrize("encoder", _one_encoder_per_class())
def test_upernet_runs_on_every_kind_of_registered_encoder(encoder):
    args = {k: v for k, v in tiny_overrides(encoder).items() if k != "img_size"}
    size = (40, 36)
    if "dynamic_img_size" in tessera.create_model(encoder, **tiny_overrides(encoder)).config.__dataclass_fields__:
        args["dynamic_img_size"] = True  # plain ViTs: any patch multiple (inputs are padded to one)
    elif "mixer" in encoder:
        size = (32, 32)  # token-mixing MLPs are built for one token count
    model = tiny("upernet_swin_tiny", encoder=encoder, encoder_args=args, aux_head=False)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)
