"""Parity with Hugging Face transformers' ViT / DeiT and with timm's layout.

transformers' models are built with random weights (re-drawn so that attention
is far from uniform, see `_randomize`), saved with
`save_pretrained`, loaded through `create_model(..., checkpoint=folder)` and
compared on logits (max abs <= 1e-4), at the native resolution and at a larger
one. transformers 5.x interpolates the position grid bicubically *by size*
(`F.interpolate(size=(H/P, W/P), mode="bicubic", align_corners=False)`, CLS and
distillation entries kept), which is exactly tessera's rule, so the comparison
at the larger size is like for like: once through a checkpoint loaded into a
larger model, once on the fly with `dynamic_img_size=True`.

LayerNorm epsilon: timm, the original JAX code and tessera use 1e-6;
transformers' configs say 1e-12 (its converted checkpoints come from timm's
weights trained with 1e-6). The models here are built with 1e-6 so that the
comparison tests the mapping, not that constant; `test_hf_default_eps_is_close`
checks that the constant alone stays within the same 1e-4 (about 3e-5 here).
"""

import pytest
import torch

import tessera
from tessera.io.checkpoint import CheckpointError

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
             intermediate_size=192, num_labels=10, layer_norm_eps=1e-6)
OURS = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
TOL = 1e-4


def _randomize(model):
    """Re-draw every weight at a scale where attention is sharp.

    transformers' own init (std 0.02, zero CLS / distillation / position tokens)
    makes attention almost uniform, so a swapped q and k or a misplaced position
    entry would move the logits by less than 1e-6 and pass unnoticed.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def _hf(cls_name, cfg_name, tmp_path, **cfg):
    torch.manual_seed(0)
    config = getattr(transformers, cfg_name)(**{**SMALL, **cfg})
    model = _randomize(getattr(transformers, cls_name)(config)).eval()
    folder = tmp_path / cls_name
    model.save_pretrained(folder)
    return model, folder


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    return _hf("ViTForImageClassification", "ViTConfig", tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def hf_deit(tmp_path_factory):
    return _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", tmp_path_factory.mktemp("deit"))


@torch.no_grad()
def test_vit_native_and_interpolated(hf_vit):
    hf, folder = hf_vit
    ours = tessera.create_model("vit_base_patch16_224", **OURS, checkpoint=folder).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _max_diff(ours(x), hf(x).logits) <= TOL
    # Larger input: checkpoint loaded into a 48-px model (grid 4x4 -> 6x6 resampled on load).
    big = tessera.create_model("vit_base_patch16_224", **{**OURS, "img_size": 48}, checkpoint=folder).eval()
    x = torch.randn(2, 3, 48, 48)
    ref = hf(x, interpolate_pos_encoding=True).logits
    assert _max_diff(big(x), ref) <= TOL
    # The same on the fly, and on a rectangular grid.
    dyn = tessera.create_model("vit_base_patch16_224", **OURS, dynamic_img_size=True, checkpoint=folder).eval()
    assert _max_diff(dyn(x), ref) <= TOL
    x = torch.randn(2, 3, 48, 64)
    assert _max_diff(dyn(x), hf(x, interpolate_pos_encoding=True).logits) <= TOL


@torch.no_grad()
def test_deit_with_teacher_native_and_interpolated(hf_deit):
    hf, folder = hf_deit
    ours = tessera.create_model("deit_base_distilled_patch16_224", **OURS, checkpoint=folder).eval()
    x = torch.randn(2, 3, 32, 32)
    out = hf(x)
    assert _max_diff(ours(x), out.logits) <= TOL  # inference: mean of the two heads
    cls_logits, dist_logits = ours.forward_distill(x)
    assert _max_diff(cls_logits, out.cls_logits) <= TOL
    assert _max_diff(dist_logits, out.distillation_logits) <= TOL
    big = tessera.create_model("deit_base_distilled_patch16_224", **{**OURS, "img_size": 48}, checkpoint=folder)
    x = torch.randn(2, 3, 48, 48)
    assert _max_diff(big.eval()(x), hf(x, interpolate_pos_encoding=True).logits) <= TOL


@torch.no_grad()
def test_bare_vit_model_and_pooler(tmp_path):
    """ViTModel (no prefix, no classifier); its pooler is the pre-training head's Linear + tanh."""
    hf, folder = _hf("ViTModel", "ViTConfig", tmp_path)
    x = torch.randn(2, 3, 32, 32)
    out = hf(x)
    ours = tessera.create_model("vit_base_patch16_224", **{**OURS, "num_classes": 0}, checkpoint=folder).eval()
    assert _max_diff(ours.forward_features(x), out.last_hidden_state) <= TOL
    pooled = tessera.create_model(
        "vit_base_patch16_224", **{**OURS, "num_classes": 0}, pre_logits_dim=48, checkpoint=folder
    ).eval()
    assert _max_diff(pooled(x), out.pooler_output) <= TOL


@pytest.mark.parametrize(
    "cls_name, cfg_name, name",
    [
        ("ViTForImageClassification", "ViTConfig", "vit_base_patch16_224"),
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig", "deit_base_distilled_patch16_224"),
    ],
)
@torch.no_grad()
def test_hf_default_eps_is_close(cls_name, cfg_name, name, tmp_path):
    hf, folder = _hf(cls_name, cfg_name, tmp_path, layer_norm_eps=1e-12)
    ours = tessera.create_model(name, **OURS, checkpoint=folder).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _max_diff(ours(x), hf(x).logits) <= TOL


def _timm_state(hf_state, prefix):
    """Hand-written rename of a transformers DeiT/ViT state dict to timm's key layout."""
    out = {}
    layers = {int(k.split(".")[3]) for k in hf_state if ".encoder.layer." in k}
    p = prefix
    out["cls_token"] = hf_state[f"{p}embeddings.cls_token"]
    if f"{p}embeddings.distillation_token" in hf_state:
        out["dist_token"] = hf_state[f"{p}embeddings.distillation_token"]
        out["head_dist.weight"] = hf_state["distillation_classifier.weight"]
        out["head_dist.bias"] = hf_state["distillation_classifier.bias"]
        out["head.weight"], out["head.bias"] = hf_state["cls_classifier.weight"], hf_state["cls_classifier.bias"]
    else:
        out["head.weight"], out["head.bias"] = hf_state["classifier.weight"], hf_state["classifier.bias"]
    out["pos_embed"] = hf_state[f"{p}embeddings.position_embeddings"]
    for t in ("weight", "bias"):
        out[f"patch_embed.proj.{t}"] = hf_state[f"{p}embeddings.patch_embeddings.projection.{t}"]
        out[f"norm.{t}"] = hf_state[f"{p}layernorm.{t}"]
        for i in layers:
            h = f"{p}encoder.layer.{i}."
            out[f"blocks.{i}.norm1.{t}"] = hf_state[h + f"layernorm_before.{t}"]
            out[f"blocks.{i}.attn.qkv.{t}"] = torch.cat(
                [hf_state[h + f"attention.attention.{n}.{t}"] for n in ("query", "key", "value")]
            )
            out[f"blocks.{i}.attn.proj.{t}"] = hf_state[h + f"attention.output.dense.{t}"]
            out[f"blocks.{i}.norm2.{t}"] = hf_state[h + f"layernorm_after.{t}"]
            out[f"blocks.{i}.mlp.fc1.{t}"] = hf_state[h + f"intermediate.dense.{t}"]
            out[f"blocks.{i}.mlp.fc2.{t}"] = hf_state[h + f"output.dense.{t}"]
    return out


@torch.no_grad()
def test_timm_layout_file(hf_deit, tmp_path):
    """An official-DeiT / timm style .pth (weights under "model") loads, also at a larger size."""
    from safetensors.torch import load_file

    hf, folder = hf_deit
    state = _timm_state(load_file(folder / "model.safetensors"), "deit.")
    path = tmp_path / "deit_timm.pth"
    torch.save({"model": state, "epoch": 3}, path)
    ours = tessera.create_model("deit_base_distilled_patch16_224", **OURS, checkpoint=path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _max_diff(ours(x), hf(x).logits) <= TOL
    big = tessera.create_model("deit_base_distilled_patch16_224", **{**OURS, "img_size": 64}, checkpoint=path)
    x = torch.randn(1, 3, 64, 64)
    assert _max_diff(big.eval()(x), hf(x, interpolate_pos_encoding=True).logits) <= TOL


def test_tessera_layout_is_unchanged(hf_vit):
    from tessera.io.convert import convert_state_dict

    model = tessera.create_model("vit_base_patch16_224", **OURS)
    state = model.state_dict()
    converted = convert_state_dict(state, model)
    assert list(converted) == list(state) and all(converted[k] is state[k] for k in state)


def test_fine_tune_head_from_hf(hf_vit):
    _, folder = hf_vit
    model = tessera.create_model("vit_base_patch16_224", **{**OURS, "num_classes": 3}, checkpoint=folder)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_wrong_architecture_names_key_and_shapes(hf_vit):
    _, folder = hf_vit
    with pytest.raises(CheckpointError, match=r"'cls_token' has shape \(1, 1, 48\) in the checkpoint, \(1, 1, 64\)"):
        tessera.create_model("vit_base_patch16_224", **{**OURS, "embed_dim": 64, "num_heads": 2}, checkpoint=folder)


@pytest.mark.slow
@torch.no_grad()
def test_full_size_deit_small_distilled(tmp_path):
    full = dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                intermediate_size=1536, num_labels=1000)
    hf, folder = _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", tmp_path, **full)
    ours = tessera.create_model("deit_small_distilled_patch16_224", checkpoint=folder).eval()
    x = torch.randn(1, 3, 224, 224)
    assert _max_diff(ours(x), hf(x).logits) <= TOL
