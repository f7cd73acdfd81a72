"""Swin parity with Hugging Face transformers, through every checkpoint layout tessera reads.

Reference: transformers' SwinForImageClassification with random weights
(perturbed so that the relative-bias tables, which it initialises to zero,
matter). Its weights are written as a transformers folder, as a timm file
(keys renamed per timm's layout: `layers.{i}.blocks.{j}.attn.qkv`, patch
merging at the start of stage i+1, head `head.fc`) and as an official `.pth`
(`{"model": ...}`, merging at the end of stage i, with the `relative_position_index`
and `attn_mask` buffers, filled with garbage to prove that they are rebuilt).
"""

import re

import pytest
import torch
from safetensors.torch import save_file

import tessera
from tessera.layers import resize_rel_pos_table

transformers = pytest.importorskip("transformers")

SMALL = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4)


def make_hf(img_size, num_labels, embed_dim, depths, num_heads, window_size):
    cfg = transformers.SwinConfig(
        image_size=img_size,
        patch_size=4,
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=window_size,
        num_labels=num_labels,
    )
    model = transformers.SwinForImageClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p), alpha=0.5 if "relative_position" in name else 0.05)
    return model


def hf_logits(hf, x):
    """transformers' logits as a freshly built model gives them.

    Its layers overwrite their window and shift in forward (a 7 x 7 stage at 224
    sets the shift of Swin-T's last stage to 0 for good), so later calls would
    depend on earlier input sizes; restore the configured values first.
    """
    from transformers.models.swin.modeling_swin import SwinStage

    for stage in hf.modules():
        if isinstance(stage, SwinStage):
            for i, layer in enumerate(stage.blocks):
                layer.window_size = hf.config.window_size
                layer.shift_size = 0 if i % 2 == 0 else hf.config.window_size // 2
    with torch.no_grad():
        return hf(pixel_values=x).logits


def tessera_model(checkpoint, num_classes, img_size, **cfg):
    return tessera.create_model(
        "swin_tiny_patch4_window7_224", num_classes=num_classes, img_size=img_size, checkpoint=checkpoint, **cfg
    ).eval()


def max_diff(model, hf, x):
    with torch.no_grad():
        return (model(x) - hf_logits(hf, x)).abs().max().item()


def hf_to_timm(hf, merge_at_end: bool):
    """transformers' hub keys -> timm (merge_at_end=False) or official / timm<0.9 (True) keys."""
    sd = {k.removeprefix("swin."): v for k, v in hf.state_dict().items()}
    out = {}
    for k, v in sd.items():
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", k):
            i, j, rest = m.groups()
            pre = f"layers.{i}.blocks.{j}."
            if rest.startswith(("attention.q_proj", "attention.k_proj", "attention.v_proj")):
                if rest.startswith("attention.q_proj"):
                    suffix = rest.rsplit(".", 1)[1]
                    parts = [sd[f"encoder.layers.{i}.blocks.{j}.attention.{p}_proj.{suffix}"] for p in "qkv"]
                    out[pre + "attn.qkv." + suffix] = torch.cat(parts)
                continue
            rest = (
                rest.replace("attention.relative_position_bias.", "attn.")
                .replace("attention.o_proj", "attn.proj")
                .replace("layernorm_before", "norm1")
                .replace("layernorm_after", "norm2")
            )
            if rest.endswith("relative_position_index"):
                continue
            out[pre + rest] = v
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.downsample\.(.+)", k):
            i = int(m.group(1)) + (0 if merge_at_end else 1)
            out[f"layers.{i}.downsample.{m.group(2)}"] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("embeddings.norm."):
            out["patch_embed.norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("classifier."):
            out[("head." if merge_at_end else "head.fc.") + k.rsplit(".", 1)[1]] = v
        else:
            raise AssertionError(f"unmapped transformers key {k}")
    return out


@pytest.fixture(scope="module")
def small_hf():
    torch.manual_seed(1)
    return make_hf(64, 5, **SMALL)


# 64: native; 75 x 50: padding at every level, odd merges, last stage 5 x 4 -> window 4, no shift;
# 90 x 61: padding with the shift mask on the padded map.
SIZES = [(64, 64), (75, 50), (90, 61)]


@pytest.mark.slow
def test_transformers_folder(small_hf, tmp_path):
    small_hf.save_pretrained(tmp_path / "hf")
    model = tessera_model(tmp_path / "hf", 5, 64, **SMALL)
    for hw in SIZES:
        assert max_diff(model, small_hf, torch.randn(2, 3, *hw)) <= 1e-4, hw


@pytest.mark.slow
def test_transformers_module_names(small_hf, tmp_path):
    """transformers 5.x module names (q_proj / k_proj / v_proj / o_proj, mlp.fc1) load too."""
    sd = {k: v.contiguous() for k, v in small_hf.state_dict().items()}
    assert any(".q_proj." in k for k in sd)
    save_file(sd, tmp_path / "hf5.safetensors")
    model = tessera_model(tmp_path / "hf5.safetensors", 5, 64, **SMALL)
    assert max_diff(model, small_hf, torch.randn(2, 3, 75, 50)) <= 1e-4


@pytest.mark.slow
def test_transformers_swin_model_backbone(small_hf, tmp_path):
    """A SwinModel checkpoint (no `swin.` prefix, no classifier) into a headless model: pooled features agree."""
    sd = {k.removeprefix("swin."): v.contiguous() for k, v in small_hf.state_dict().items() if k.startswith("swin.")}
    save_file(sd, tmp_path / "swin_model.safetensors")
    model = tessera_model(tmp_path / "swin_model.safetensors", 0, 64, **SMALL)
    x = torch.randn(2, 3, 75, 50)
    hf_logits(small_hf, x)  # resets transformers' window / shift state
    with torch.no_grad():
        ref = small_hf.swin(pixel_values=x).pooler_output
        assert (model(x) - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_timm_layout(small_hf, tmp_path):
    sd = hf_to_timm(small_hf, merge_at_end=False)
    assert "layers.1.downsample.reduction.weight" in sd and "head.fc.weight" in sd
    save_file(sd, tmp_path / "timm.safetensors")
    model = tessera_model(tmp_path / "timm.safetensors", 5, 64, **SMALL)
    for hw in SIZES[:2]:
        assert max_diff(model, small_hf, torch.randn(2, 3, *hw)) <= 1e-4, hw


@pytest.mark.slow
def test_official_pth_with_buffers(small_hf, tmp_path):
    sd = hf_to_timm(small_hf, merge_at_end=True)
    assert "layers.0.downsample.reduction.weight" in sd and "head.weight" in sd
    for k in [k for k in sd if k.endswith("attn.relative_position_bias_table")]:
        n = 16  # window 4 -> 16 tokens
        sd[k.replace("relative_position_bias_table", "relative_position_index")] = torch.randint(0, 49, (n, n))
        sd[k.replace("attn.relative_position_bias_table", "attn_mask")] = torch.full((4, n, n), 7.0)
    torch.save({"model": sd, "epoch": 300}, tmp_path / "official.pth")
    model = tessera_model(tmp_path / "official.pth", 5, 64, **SMALL)
    for hw in SIZES[:2]:
        assert max_diff(model, small_hf, torch.randn(2, 3, *hw)) <= 1e-4, hw


@pytest.mark.slow
def test_window7_checkpoint_into_window12_model(tmp_path):
    torch.manual_seed(2)
    hf = make_hf(56, 3, embed_dim=16, depths=(2,), num_heads=(2,), window_size=7)
    hf.save_pretrained(tmp_path / "w7")
    model = tessera_model(tmp_path / "w7", 3, 96, embed_dim=16, depths=(2,), num_heads=(2,), window_size=12)
    for j in range(2):
        old = hf.swin.encoder.layers[0].blocks[j].attention.relative_position_bias.relative_position_bias_table
        new = model.stages[0].blocks[j].attn.rel_pos_bias.table
        assert old.shape == (169, 2) and new.shape == (529, 2)
        torch.testing.assert_close(new, resize_rel_pos_table(old.detach(), (12, 12), (7, 7)))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 96, 96))).all()


def test_tessera_layout_is_unchanged_by_the_converter():
    from tessera.io.convert import convert_state_dict

    model = tessera.create_model("swin_tiny_patch4_window7_224", **SMALL, img_size=64)
    sd = model.state_dict()
    out = convert_state_dict(sd, model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def _shrinkable_hf_bias(monkeypatch, hf):
    """Let transformers run where its window shrinks below the configured one.

    transformers 5.23 shrinks the window of a stage smaller than it (8 x 6 in
    Swin-T at 250 x 190) but keeps the full-window bias and fails with a shape
    error. Here its bias reads the centre of the table for the shrunk window,
    the only reading of a relative bias that stays per-offset (as tessera does).
    """
    from transformers.models.swin import modeling_swin as ms

    def forward(self):
        m = getattr(self, "_tokens_side", self.window_size[0])
        M = self.window_size[0]
        table = self.relative_position_bias_table.reshape(2 * M - 1, 2 * M - 1, -1)
        lo = M - m
        table = table[lo : lo + 2 * m - 1, lo : lo + 2 * m - 1].reshape((2 * m - 1) ** 2, -1)
        ys, xs = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + m - 1) * (2 * m - 1) + xs[:, None] - xs[None, :] + m - 1
        return table[index].permute(2, 0, 1).unsqueeze(0)

    monkeypatch.setattr(ms.SwinRelativePositionBias, "forward", forward)
    for mod in hf.modules():
        if isinstance(mod, ms.SwinAttention):

            def hook(module, args, rpb=mod.relative_position_bias):
                rpb._tokens_side = round(args[0].shape[1] ** 0.5)

            mod.register_forward_pre_hook(hook)


@pytest.mark.slow
def test_full_swin_tiny_224_and_padded(tmp_path, monkeypatch):
    torch.manual_seed(3)
    hf = make_hf(224, 10, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    hf.save_pretrained(tmp_path / "swin_t")
    model = tessera.create_model("swin_tiny_patch4_window7_224", num_classes=10, checkpoint=tmp_path / "swin_t").eval()
    diffs = {}
    diffs[224] = max_diff(model, hf, torch.randn(2, 3, 224, 224))
    # 260 x 230: every stage padded, none smaller than the window: plain transformers runs.
    diffs[260] = max_diff(model, hf, torch.randn(1, 3, 260, 230))
    # 250 x 190: the last stage (8 x 6) shrinks the window to 6; see _shrinkable_hf_bias.
    _shrinkable_hf_bias(monkeypatch, hf)
    diffs[250] = max_diff(model, hf, torch.randn(1, 3, 250, 190))
    print("swin-t max-abs logit differences:", diffs)
    assert all(d <= 1e-4 for d in diffs.values()), diffs


def test_official_layout_with_absolute_embedding_and_pair_window(tmp_path):
    """An `ape=True` official checkpoint ((1, N, C) absolute embedding) loads into pos_embed='abs+rel'."""
    cfg = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(4, 2))
    src = tessera.create_model("swin_tiny_patch4_window7_224", pos_embed="abs+rel", **cfg).eval()
    official = {}
    for k, v in src.state_dict().items():
        if k == "abs_pos_embed":
            k, v = "absolute_pos_embed", v.reshape(1, -1, v.shape[-1])
        elif m := re.fullmatch(r"stages\.(\d+)\.patch_merge\.(.+)", k):
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        k = k.replace("stages.", "layers.").replace("attn.rel_pos_bias.table", "attn.relative_position_bias_table")
        official[k] = v
    torch.save({"model": official}, tmp_path / "ape.pth")
    dst = tessera.create_model(
        "swin_tiny_patch4_window7_224", pos_embed="abs+rel", checkpoint=tmp_path / "ape.pth", **cfg
    )
    x = torch.randn(2, 3, 30, 26)
    with torch.no_grad():
        assert torch.equal(src(x), dst.eval()(x))


def test_saved_pair_window_is_honoured(tmp_path):
    """A tessera checkpoint with (4, 6) windows into a (6, 4) model: the tables (same row count) are resized."""
    cfg = dict(img_size=24, patch_size=2, embed_dim=16, depths=(2,), num_heads=(2,))
    src = tessera.create_model("swin_tiny_patch4_window7_224", window_size=(4, 6), **cfg)
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name.endswith("rel_pos_bias.table"):
                p.normal_()
    src.save_pretrained(tmp_path / "w46")
    dst = tessera.create_model("swin_tiny_patch4_window7_224", window_size=(6, 4), checkpoint=tmp_path / "w46", **cfg)
    for j in range(2):
        old = src.stages[0].blocks[j].attn.rel_pos_bias.table.detach()
        new = dst.stages[0].blocks[j].attn.rel_pos_bias.table
        assert old.shape == new.shape == (77, 2)
        torch.testing.assert_close(new, resize_rel_pos_table(old, (6, 4), (4, 6)))
    same = tessera.create_model("swin_tiny_patch4_window7_224", window_size=(4, 6), checkpoint=tmp_path / "w46", **cfg)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), same.state_dict().values()))


@pytest.mark.slow
def test_transformers_simmim_mask_token(tmp_path):
    """SwinForMaskedImageModeling's mask token loads into use_mask_token=True; masked tokens agree with SwinModel."""
    torch.manual_seed(4)
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
    )
    hf = transformers.SwinForMaskedImageModeling(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.add_(torch.randn_like(p), alpha=0.5 if "relative_position" in name or "mask_token" in name else 0.05)
    hf.save_pretrained(tmp_path / "simmim")
    kw = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=0)
    model = tessera_model(tmp_path / "simmim", use_mask_token=True, **kw)
    torch.testing.assert_close(model.mask_token, hf.swin.embeddings.mask_token)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 64) < 0.4
    with torch.no_grad():
        ref = hf.swin(pixel_values=x, bool_masked_pos=mask).last_hidden_state  # (B, 4 * 4, 32)
        ours = model.forward_tokens(x, mask=mask)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert "mask_token" not in tessera_model(tmp_path / "simmim", **kw).state_dict()  # dropped otherwise
