"""Swin checkpoints from timm, Hugging Face transformers and the official release.

Layouts, detected from the keys (tessera's: `stages.{i}.blocks.{j}...`):
- timm >= 0.9: `layers.{i}.blocks.{j}.attn.qkv`, patch merging at the *start*
  of a stage (`layers.{i}.downsample`, i >= 1), head `head.fc`.
- official release (`{"model": state}`, unwrapped by `read_state_dict`) and
  older timm: the same names, but patch merging at the *end* of a stage
  (`layers.{i}.downsample` belongs to stage i+1), head `head`, optional
  `absolute_pos_embed` (1, N, C), and saved buffers `relative_position_index`
  / `attn_mask`, which are dropped: tessera rebuilds them, never trusts them.
- transformers (SwinModel: `embeddings.*`, `encoder.layers.*`, `layernorm.*`;
  SwinForImageClassification: the same under `swin.` plus `classifier.*`),
  in both the hub names (`attention.self.query/key/value`,
  `intermediate.dense`, `output.dense`) and the 5.x module names
  (`attention.q_proj/k_proj/v_proj/o_proj`, `mlp.fc1/fc2`); the separate q, k,
  v projections are fused into one qkv.

Then, whatever the layout: a relative-bias table learned for another window
size is resized (bicubic) and an absolute embedding is brought to the model's
grid. A state dict already in tessera's layout that fits comes back unchanged.
"""

from __future__ import annotations

import logging
import math
import re

import torch
from torch import Tensor, nn

from tessera.io.convert import StateDict, register_converter
from tessera.layers.pos_embed import resample_abs_pos_embed, resize_rel_pos_table

log = logging.getLogger(__name__)

_DERIVED = ("relative_position_index", "attn_mask")  # buffers some layouts save; rebuilt here


@register_converter("swin")
def convert_swin(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """Translate a timm / transformers / official Swin state dict to tessera's keys for `model`."""
    keys = list(state)
    if any(k.startswith("stages.") for k in keys):
        out = state
    elif any(k.startswith(("embeddings.", "encoder.layers.", "swin.embeddings.", "swin.encoder.")) for k in keys):
        log.info("swin checkpoint: Hugging Face transformers layout")
        out = _from_transformers(state)
    elif any(k.startswith("layers.") for k in keys):
        merge_at_end = any(k.startswith("layers.0.downsample.") for k in keys)
        log.info("swin checkpoint: %s layout", "official / timm < 0.9" if merge_at_end else "timm")
        out = _from_timm(state, merge_at_end)
    else:
        return state  # unknown: load_checkpoint reports what is missing
    return _fit_to_model(out, model)


# ---------------------------------------------------------------- timm / official


_TIMM_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_TIMM_MERGE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")


def _from_timm(state: StateDict, merge_at_end: bool) -> StateDict:
    out: StateDict = {}
    for k, v in state.items():
        if k.endswith(_DERIVED):
            continue
        if m := _TIMM_BLOCK.fullmatch(k):
            i, j, rest = m.groups()
            rest = rest.replace("attn.relative_position_bias_table", "attn.rel_pos_bias.table")
            out[f"stages.{i}.blocks.{j}.{rest}"] = v
        elif m := _TIMM_MERGE.fullmatch(k):
            i, rest = int(m.group(1)), m.group(2)
            out[f"stages.{i + 1 if merge_at_end else i}.patch_merge.{rest}"] = v
        elif k == "absolute_pos_embed":
            out["abs_pos_embed"] = v
        elif k.startswith("head.fc."):
            out["head." + k[len("head.fc.") :]] = v
        else:  # patch_embed.proj / patch_embed.norm / norm / head: same names
            out[k] = v
    return out


# ---------------------------------------------------------------- transformers


_HF_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_HF_MERGE = re.compile(r"encoder\.layers\.(\d+)\.downsample\.(.+)")
# Block-relative names, hub layout and transformers 5.x modules, -> tessera.
_HF_BLOCK_NAMES = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_HF_QKV = {
    "attention.self.query.": 0,
    "attention.self.key.": 1,
    "attention.self.value.": 2,
    "attention.q_proj.": 0,
    "attention.k_proj.": 1,
    "attention.v_proj.": 2,
}
_HF_TABLE = (
    "attention.self.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_bias_table",
)


def _from_transformers(state: StateDict) -> StateDict:
    out: StateDict = {}
    qkv: dict[str, list] = {}  # 'stages.i.blocks.j.attn.qkv.weight' -> [q, k, v]
    for k, v in state.items():
        k = k.removeprefix("swin.")
        if k.endswith(_DERIVED):
            continue
        if m := _HF_BLOCK.fullmatch(k):
            i, j, rest = m.groups()
            prefix = f"stages.{i}.blocks.{j}."
            if rest in _HF_TABLE:
                out[prefix + "attn.rel_pos_bias.table"] = v
                continue
            part = next((p for p in _HF_QKV if rest.startswith(p)), None)
            if part is not None:
                name = prefix + "attn.qkv." + rest[len(part) :]
                qkv.setdefault(name, [None] * 3)[_HF_QKV[part]] = v
                continue
            old = next((p for p in _HF_BLOCK_NAMES if rest.startswith(p)), None)
            if old is None:
                out[k] = v  # unknown: reported as unexpected by the loader
                continue
            out[prefix + _HF_BLOCK_NAMES[old] + rest[len(old) :]] = v
        elif m := _HF_MERGE.fullmatch(k):
            out[f"stages.{int(m.group(1)) + 1}.patch_merge.{m.group(2)}"] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("embeddings.norm."):
            out["patch_embed.norm." + k.rsplit(".", 1)[1]] = v
        elif k == "embeddings.position_embeddings":
            out["abs_pos_embed"] = v
        elif k == "embeddings.mask_token":
            log.info("swin checkpoint: dropping SimMIM's embeddings.mask_token")
        elif k.startswith("layernorm."):
            out["norm." + k[len("layernorm.") :]] = v
        elif k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = v
        else:
            out[k] = v
    for name, parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"transformers Swin checkpoint lacks one of query/key/value for {name!r}")
        out[name] = torch.cat(parts, dim=0)  # rows: q, then k, then v
    return out


# ---------------------------------------------------------------- fit to the model


def _fit_to_model(state: StateDict, model: nn.Module) -> StateDict:
    """Resize relative-bias tables and absolute embeddings whose shape differs from the model's."""
    expected = model.state_dict()
    changed: StateDict = {}
    for k, v in state.items():
        want = expected.get(k)
        if want is None or want.shape == v.shape:
            continue
        if k.endswith("rel_pos_bias.table") and v.ndim == 2 and v.shape[1] == want.shape[1]:
            changed[k] = _resize_table(k, v, model)
        elif k == "abs_pos_embed":
            changed[k] = _fit_abs_pos_embed(v, tuple(want.shape[1:3]))
    return {**state, **changed} if changed else state


def _resize_table(key: str, table: Tensor, model: nn.Module) -> Tensor:
    """Bicubic resize of a ((2M-1)^2, heads) table to the model's window (notes 003: '(2M-1)^2 bias per head')."""
    attn = model.get_submodule(key.removesuffix(".rel_pos_bias.table"))
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(
            f"{key!r}: cannot infer the window of a relative-bias table with {table.shape[0]} rows "
            f"(expected (2M-1)^2); the model's window is {attn.window}"
        )
    old = ((side + 1) // 2, (side + 1) // 2)
    log.info("swin checkpoint: resizing %s from window %s to %s (bicubic)", key, old, attn.window)
    return resize_rel_pos_table(table, attn.window, old_window=old)


def _fit_abs_pos_embed(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """An absolute embedding (1, N, C) or (1, H, W, C) -> (1, *grid, C), resampled if N differs."""
    C = pos.shape[-1]
    flat = pos.reshape(1, -1, C)
    if flat.shape[1] != grid[0] * grid[1]:
        old = tuple(pos.shape[1:3]) if pos.ndim == 4 else None
        flat = resample_abs_pos_embed(flat, grid, old_grid=old, num_prefix_tokens=0)
    return flat.reshape(1, grid[0], grid[1], C)
