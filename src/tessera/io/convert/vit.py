"""Checkpoint converter for the vit family (ViT, DeiT).

Layouts understood (detected from the keys):

* tessera's own, which is timm's `VisionTransformer` / `VisionTransformerDistilled`
  layout (cls_token, dist_token, pos_embed, patch_embed.proj, blocks.i.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, pre_logits.fc, head,
  head_dist); the official DeiT release uses it too (under "model").
* Hugging Face transformers' ViTModel (`embeddings.*`, `encoder.layer.i.*`,
  `layernorm`, `pooler`), ViTForImageClassification (`vit.*` + `classifier`),
  DeiTModel / DeiTForImageClassification(WithTeacher) (`deit.*`, `cls_classifier`,
  `distillation_classifier`), both as saved on disk and in transformers 5's
  in-memory naming (`layers.i.attention.q_proj`, ...). Separate q, k, v
  projections are fused into one qkv matrix, rows ordered [q; k; v].

In every layout a position grid of another resolution is bicubic-resampled (by
size; prefix entries kept) to the model's patch grid, and relative-position
tables are resized likewise, so a 224-px checkpoint loads into a 384-px model.
"""

from __future__ import annotations

import logging
import re

from torch import Tensor, nn

from tessera.io.convert import StateDict, register_converter
from tessera.io.convert.common import fit_pos_grid, fit_rel_pos_table, fuse_qkv, saved_patch_grid
from tessera.io.convert.dinov2 import convert_dinov2_state, is_dinov2_state

log = logging.getLogger(__name__)

_HF_MARK = "embeddings.patch_embeddings.projection.weight"

# Per-layer names of transformers (saved layout, then 5.x in-memory layout) -> ours.
_HF_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.dense.weight": "pre_logits.fc.weight",
    "pooler.dense.bias": "pre_logits.fc.bias",
}
_HF_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_HF_LAYER_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def _from_transformers(state: StateDict, model: nn.Module) -> StateDict:
    """Rename a transformers ViT/DeiT state dict to tessera's layout, fusing q, k, v."""
    mark = next(k for k in state if k.endswith(_HF_MARK))
    prefix = mark[: -len(_HF_MARK)]  # "vit.", "deit." or "" (bare ViTModel)
    own = model.state_dict()
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}  # 'blocks.i.attn.qkv.weight' -> {'q', 'k', 'v'}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _HF_HEADS:  # classifier / cls_classifier / distillation_classifier
            out[f"{_HF_HEADS[head]}.{rest}"] = value
            continue
        if not key.startswith(prefix):
            raise ValueError(f"unexpected key {key!r} in a transformers ViT/DeiT checkpoint")
        name = key[len(prefix):]
        if name in _HF_TOP:
            new = _HF_TOP[name]
            if new.startswith("pre_logits.") and new not in own:
                continue  # ViTModel's pooler (dense + tanh) when the model has a linear head only
            out[new] = value
            continue
        if name == "embeddings.mask_token":
            if "mask_token" in own:  # a model built with use_mask_token=True keeps it
                out["mask_token"] = value
            continue  # else: only used by transformers' masked-image-modelling head
        m = _HF_LAYER_RE.match(name)
        if m is None:
            raise ValueError(f"unknown key {key!r} in a transformers ViT/DeiT checkpoint")
        i, sub, kind = int(m.group(1)), m.group(2), m.group(3)
        if sub in _HF_QKV:
            qkv.setdefault(f"blocks.{i}.attn.qkv.{kind}", {})[_HF_QKV[sub]] = value
        elif sub in _HF_LAYER:
            out[f"blocks.{i}.{_HF_LAYER[sub]}.{kind}"] = value
        else:
            raise ValueError(f"unknown key {key!r} in a transformers ViT/DeiT checkpoint")
    return {**out, **fuse_qkv(qkv, "transformers ViT/DeiT")}


def _fit_positions(state: StateDict, model: nn.Module, source_config: dict | None) -> StateDict:
    """Resample the checkpoint's position grid and relative-bias tables to the model's grid.

    The source grid comes from the saved tessera config when it has one, else
    a square one (see `tessera.io.convert.common`).
    """
    own = model.state_dict()
    grid = tuple(model.patch_grid)
    saved_grid = saved_patch_grid(source_config)
    pe = state.get("pos_embed")
    if pe is not None and "pos_embed" not in own:
        # A fixed sine-cosine grid stored by timm as a frozen parameter: ours is derived.
        state = {k: v for k, v in state.items() if k != "pos_embed"}
    elif pe is not None and pe.ndim == 3 and pe.shape[-1] == own["pos_embed"].shape[-1]:
        # Register tokens have no position: only CLS / distillation entries precede the grid.
        state = dict(state, pos_embed=fit_pos_grid(pe, grid, model.num_pos_prefix_tokens, saved_grid))
    for key in [k for k in state if k.endswith("rel_pos_bias.table")]:
        table = state[key]
        if key in own and table.ndim == 2 and table.shape[1] == own[key].shape[1]:
            state = dict(state, **{key: fit_rel_pos_table(table, grid, saved_grid, key)})
    return state


@register_converter("vit")
def convert_vit(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """timm / transformers / tessera ViT or DeiT weights -> tessera's layout for `model`."""
    if is_dinov2_state(state):  # transformers' Dinov2Model / Dinov2WithRegistersModel
        state = convert_dinov2_state(state, model.state_dict())
    elif any(k.endswith(_HF_MARK) for k in state):
        state = _from_transformers(state, model)
    return _fit_positions(state, model, source_config)

