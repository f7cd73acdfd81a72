"""Hugging Face transformers' DPT and UperNet checkpoints -> tessera's dense models.

Layouts, detected from the keys:
- `DPTForDepthEstimation` / `DPTForSemanticSegmentation` (`dpt.*` ViT,
  `neck.reassemble_stage.*`, `neck.convs.*`, `neck.fusion_stage.*`, `head.head.*`,
  `auxiliary_head.head.*`): the ViT part goes through the vit converter; the
  coarsest fusion block's `residual_layer1`, which no forward uses
  (transformers #28292), is dropped.
- `UperNetForSemanticSegmentation` with a Swin backbone (`backbone.embeddings.*`,
  `backbone.encoder.*`, `backbone.hidden_states_norms.stage{k}`, `decode_head.*`,
  `auxiliary_head.*`): the Swin part goes through the swin converter, the
  stage norms become the decoder's level norms. SwinBackbone has no final
  norm; the encoder's (unused unless `intermediate_norm=True`) is set to the
  identity.

Hugging Face folders do not say which tessera model they are: their
`config.json` is translated by `transformers_overrides`, and `from_transformers(folder)`
builds the model and loads the weights in one call.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.io.convert import StateDict, convert_state_dict, register_converter

log = logging.getLogger(__name__)


def _encoder_part(state: StateDict, prefix: str, model: nn.Module) -> StateDict:
    """The keys under `prefix`, translated by the encoder family's converter, under `encoder.`."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {f"encoder.{k}": v for k, v in convert_state_dict(sub, model.encoder).items()}


# --------------------------------------------------------------------------- DPT

_DPT_NECK = [
    (re.compile(r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(.+)"), r"reassemble.\1.readout_proj.0.\2"),
    (re.compile(r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(.+)"), r"reassemble.\1.proj.\2"),
    (re.compile(r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(.+)"), r"reassemble.\1.resample.\2"),
    (re.compile(r"neck\.convs\.(\d+)\.(.+)"), r"neck_convs.\1.\2"),
    (re.compile(r"neck\.fusion_stage\.layers\.(\d+)\.projection\.(.+)"), r"fusion.\1.proj.\2"),
    (
        re.compile(r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer(\d)\.convolution(\d)\.(.+)"),
        r"fusion.\1.rcu\2.conv\3.\4",
    ),
    (
        re.compile(r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer(\d)\.batch_norm(\d)\.(.+)"),
        r"fusion.\1.rcu\2.bn\3.\4",
    ),
]
# nn.Sequential indices of transformers' heads -> tessera's names.
_DPT_DEPTH_HEAD = {"0": "conv1", "2": "conv2", "4": "conv3"}
_DPT_SEG_HEAD = {"0": "conv", "1": "bn", "4": "classifier"}


def _from_transformers_dpt(state: StateDict, model: nn.Module) -> StateDict:
    out = _encoder_part(state, "dpt.", model)
    depth = model.config.task == "depth"
    for key, value in state.items():
        if key.startswith("dpt."):
            continue
        if key.startswith("neck.fusion_stage.layers.0.residual_layer1."):
            continue  # never run (transformers #28292): the coarsest block has nothing to fuse
        if key.startswith("head.projection."):
            raise ValueError(
                "this DPT checkpoint has a depth-head projection (add_projection=True), which tessera's DPT does not build"
            )
        if m := re.fullmatch(r"(head|auxiliary_head)\.head\.(\d+)\.(.+)", key):
            which, idx, rest = m.groups()
            table = _DPT_DEPTH_HEAD if which == "head" and depth else _DPT_SEG_HEAD
            if which == "auxiliary_head" and model.aux_head is None:
                log.info("DPT checkpoint: dropping the auxiliary head (the model was built with aux_head=False)")
                continue
            out[f"{'head' if which == 'head' else 'aux_head'}.{table.get(idx, idx)}.{rest}"] = value
            continue
        for pattern, repl in _DPT_NECK:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            out[key] = value  # unknown: reported as unexpected by the loader
    return out


@register_converter("dpt")
def convert_dpt(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """transformers' DPTForDepthEstimation / DPTForSemanticSegmentation, or tessera's own, -> `model`'s keys."""
    if any(k.startswith(("dpt.", "neck.")) for k in state):
        log.info("DPT checkpoint: Hugging Face transformers layout")
        return _from_transformers_dpt(state, model)
    return state


# --------------------------------------------------------------------------- UperNet

_UPERNET = [
    (re.compile(r"decode_head\.psp_modules\.(\d+)\.1\.(.+)"), r"decoder.ppm.convs.\1.\2"),
    (re.compile(r"decode_head\.bottleneck\.(.+)"), r"decoder.ppm.bottleneck.\1"),
    (re.compile(r"decode_head\.lateral_convs\.(\d+)\.(.+)"), r"decoder.lateral.\1.\2"),
    (re.compile(r"decode_head\.fpn_convs\.(\d+)\.(.+)"), r"decoder.fpn_convs.\1.\2"),
    (re.compile(r"decode_head\.fpn_bottleneck\.(.+)"), r"decoder.fuse.\1"),
    (re.compile(r"decode_head\.classifier\.(.+)"), r"head.classifier.\1"),
    (re.compile(r"auxiliary_head\.convs\.0\.(.+)"), r"aux_head.conv.\1"),
    (re.compile(r"auxiliary_head\.classifier\.(.+)"), r"aux_head.classifier.\1"),
    (re.compile(r"backbone\.hidden_states_norms\.stage(\d+)\.(.+)"), None),  # stage k -> level_norms.{k-1}
]


def _from_transformers_upernet(state: StateDict, model: nn.Module) -> StateDict:
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.") and "hidden_states_norms" not in k}
    out = _encoder_part(backbone, "backbone.", model)
    for key, value in state.items():
        if key in backbone:
            continue
        if key.startswith("auxiliary_head.") and model.aux_head is None:
            continue  # an inference model built without the auxiliary head
        if key.startswith(("auxiliary_head.convs.1.", "auxiliary_head.conv_cat.")):
            raise ValueError(
                f"{key!r}: tessera's auxiliary FCN head has one conv and no concat_input "
                "(auxiliary_num_convs=1, auxiliary_concat_input=False)"
            )
        for pattern, repl in _UPERNET:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            if repl is None:
                new = f"level_norms.{int(m.group(1)) - 1}.norm.{m.group(2)}"
            else:
                new = pattern.sub(repl, key)
            out[new.replace(".batch_norm.", ".bn.")] = value
            break
        else:
            out[key] = value  # unknown: reported as unexpected by the loader
    own = model.state_dict()
    for name, fill in (("encoder.norm.weight", torch.ones_like), ("encoder.norm.bias", torch.zeros_like)):
        if name in own and name not in out:
            out[name] = fill(own[name])  # SwinBackbone has no final norm: identity
    return out


@register_converter("pyramid")
def convert_pyramid(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """transformers' UperNetForSemanticSegmentation (Swin backbone), or tessera's own, -> `model`'s keys."""
    if any(k.startswith("decode_head.") for k in state):
        log.info("UperNet checkpoint: Hugging Face transformers layout")
        return _from_transformers_upernet(state, model)
    return state


# --------------------------------------------------------------------------- configs


def _read_config(config: str | Path | dict) -> dict:
    if isinstance(config, dict):
        return config
    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"no transformers config.json at {str(path)!r}")
    return json.loads(path.read_text())


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"unsupported transformers config: {what}")


def _vit_args(c: dict) -> dict:
    _require(c.get("hidden_act", "gelu") == "gelu", f"hidden_act={c.get('hidden_act')!r} (tessera's ViT uses GELU)")
    return dict(
        embed_dim=c["hidden_size"],
        depth=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        mlp_ratio=c["intermediate_size"] / c["hidden_size"],
        patch_size=c["patch_size"],
        qkv_bias=c.get("qkv_bias", True),
        dynamic_img_size=True,
        pos_embed_interp="bilinear",  # transformers' DPT resamples positions bilinearly
    )


def _swin_args(b: dict) -> dict:
    _require(b.get("model_type") == "swin", f"backbone {b.get('model_type')!r} (tessera's UperNet converter reads Swin)")
    _require(b.get("hidden_act", "gelu") == "gelu", f"hidden_act={b.get('hidden_act')!r}")
    return dict(
        embed_dim=b["embed_dim"],
        depths=tuple(b["depths"]),
        num_heads=tuple(b["num_heads"]),
        window_size=b["window_size"],
        mlp_ratio=b.get("mlp_ratio", 4.0),
        qkv_bias=b.get("qkv_bias", True),
        patch_size=b["patch_size"],
        pos_embed="abs+rel" if b.get("use_absolute_embeddings") else "rel",
    )


def transformers_overrides(config: str | Path | dict) -> tuple[str, dict[str, Any]]:
    """(registry name, config overrides) of the tessera model equal to a transformers DPT / UperNet.

    Args:
        config: a transformers `config.json` (its folder, its path, or the dict).
    """
    c = _read_config(config)
    kind = c.get("model_type")
    archs = c.get("architectures") or []
    if kind == "dpt":
        _require(not c.get("is_hybrid") and c.get("backbone_config") is None, "DPT-Hybrid / a DPT backbone_config")
        _require(list(c.get("reassemble_factors", [4, 2, 1, 0.5])) == [4, 2, 1, 0.5], "reassemble_factors")
        _require(not c.get("add_projection", False), "add_projection=True")
        _require(c.get("head_in_index", -1) == -1, "head_in_index != -1")
        bn = c.get("use_batch_norm_in_fusion_residual", False)
        bias = c.get("use_bias_in_fusion_residual")
        _require(bias is None or bias == (not bn), "use_bias_in_fusion_residual == use_batch_norm_in_fusion_residual")
        seg = "DPTForSemanticSegmentation" in archs
        task = "segmentation" if seg else "depth"
        ov: dict[str, Any] = dict(
            encoder="vit_base_patch16_384",
            encoder_args=_vit_args(c),
            img_size=c["image_size"],
            in_chans=c.get("num_channels", 3),
            task=task,
            num_classes=len(c.get("id2label", {})) or c.get("num_labels", 2) if seg else 1,
            layers=tuple(c["backbone_out_indices"]),
            readout=c.get("readout_type", "project"),
            neck_channels=tuple(c["neck_hidden_sizes"]),
            fusion_channels=c["fusion_hidden_size"],
            fusion_batch_norm=bn,
            intermediate_norm=False,
            aux_head=bool(seg and c.get("use_auxiliary_head", True)),
            head_dropout=c.get("semantic_classifier_dropout", 0.1),
        )
        return ("dpt_vit_base_patch16_384_seg" if seg else "dpt_vit_base_patch16_384_depth"), ov
    if kind == "upernet":
        b = c.get("backbone_config") or {}
        outs = b.get("out_features") or ["stage1", "stage2", "stage3", "stage4"]
        layers = tuple(int(s.removeprefix("stage")) - 1 for s in outs)
        _require(all(s.startswith("stage") for s in outs) and min(layers) >= 0, f"out_features {outs}")
        swin = _swin_args(b)
        aux = bool(c.get("use_auxiliary_head", True))
        if aux:
            _require(c.get("auxiliary_num_convs", 1) == 1, "auxiliary_num_convs != 1")
            _require(not c.get("auxiliary_concat_input", False), "auxiliary_concat_input=True")
            # transformers' conversion writes it (384 for Swin-T): fine when it is the width of the
            # level the auxiliary head reads (level 2 of the selected stages), as tessera builds it
            aux_in = c.get("auxiliary_in_channels")
            widths = [swin["embed_dim"] * 2**i for i in layers]
            _require(
                aux_in is None or (len(widths) > 2 and aux_in == widths[2]),
                f"auxiliary_in_channels={aux_in} (the auxiliary head reads level 2 of {widths})",
            )
        ov = dict(
            encoder="swin_tiny_patch4_window7_224",
            encoder_args=swin,
            img_size=b.get("image_size", 224),
            in_chans=b.get("num_channels", 3),
            task="segmentation",
            num_classes=len(c.get("id2label", {})) or c.get("num_labels", 2),
            decoder="upernet",
            layers=layers,
            channels=c.get("hidden_size", 512),
            pool_scales=tuple(c.get("pool_scales", (1, 2, 3, 6))),
            intermediate_norm=False,
            aux_head=aux,
            aux_channels=c.get("auxiliary_channels", 256),
            aux_index=2,
        )
        return "upernet_swin_tiny", ov
    raise ValueError(f"not a transformers DPT or UperNet config: model_type={kind!r}")


def from_transformers(folder: str | Path, **overrides: Any) -> nn.Module:
    """Build the tessera model equal to a saved transformers DPT / UperNet folder and load its weights."""
    from tessera.core.registry import create_model

    name, ov = transformers_overrides(folder)
    return create_model(name, checkpoint=folder, **{**ov, **overrides})
