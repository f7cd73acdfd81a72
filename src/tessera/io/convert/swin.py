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
grid, with the helpers every converter shares (`tessera.io.convert.common`):
the source window / grid is the saved tessera config's when there is one (a
(4, 6) window is told from a (6, 4) one), else a square one. A state dict
already in tessera's layout that fits comes back unchanged. SimMIM's
`mask_token` is kept for a model built with `use_mask_token=True` (and SimMIM's
decoder of SwinForMaskedImageModeling dropped: it is not part of the encoder).
"""

from __future__ import annotations

import logging
import re

from torch import Tensor, nn

from tessera.io.convert import StateDict, register_converter
from tessera.io.convert.common import fit_pos_grid, fit_rel_pos_table, fuse_qkv, saved_patch_grid, saved_value
from tessera.layers.patch_embed import to_2tuple

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
        out = _from_transformers(state, "mask_token" in model.state_dict())
    elif any(k.startswith("layers.") for k in keys):
        merge_at_end = any(k.startswith("layers.0.downsample.") for k in keys)
        log.info("swin checkpoint: %s layout", "official / timm < 0.9" if merge_at_end else "timm")
        out = _from_timm(state, merge_at_end)
    else:
        return state  # unknown: load_checkpoint reports what is missing
    return _fit_to_model(out, model, source_config)


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
    "attention.self.query.": "q",
    "attention.self.key.": "k",
    "attention.self.value.": "v",
    "attention.q_proj.": "q",
    "attention.k_proj.": "k",
    "attention.v_proj.": "v",
}
_HF_TABLE = (
    "attention.self.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_bias_table",
)


def _from_transformers(state: StateDict, keep_mask_token: bool) -> StateDict:
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}  # 'stages.i.blocks.j.attn.qkv.weight' -> {'q', 'k', 'v'}
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
                qkv.setdefault(name, {})[_HF_QKV[part]] = v
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
            if keep_mask_token:
                out["mask_token"] = v
            else:
                log.info("swin checkpoint: dropping SimMIM's embeddings.mask_token (model without use_mask_token)")
        elif k.startswith("decoder."):
            log.info("swin checkpoint: dropping SwinForMaskedImageModeling's %s (SimMIM's decoder, not the encoder)", k)
        elif k.startswith("layernorm."):
            out["norm." + k[len("layernorm.") :]] = v
        elif k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = v
        else:
            out[k] = v
    return {**out, **fuse_qkv(qkv, "transformers Swin")}


# ---------------------------------------------------------------- fit to the model


def _fit_to_model(state: StateDict, model: nn.Module, source_config: dict | None) -> StateDict:
    """Resize relative-bias tables and absolute embeddings whose shape differs from the model's."""
    expected = model.state_dict()
    config = model.config
    window = to_2tuple(config.window_size)
    saved_window = saved_value(source_config, "window_size")
    saved_window = None if saved_window is None else to_2tuple(saved_window)
    changed: StateDict = {}
    for k, v in state.items():
        want = expected.get(k)
        if want is None or (want.shape == v.shape and saved_window in (None, window)):
            continue
        if k.endswith("rel_pos_bias.table") and v.ndim == 2 and v.shape[1] == want.shape[1]:
            changed[k] = fit_rel_pos_table(v, window, saved_window, k)
        elif k == "abs_pos_embed" and v.shape[-1] == want.shape[-1]:
            changed[k] = _fit_abs_pos_embed(v, tuple(want.shape[1:3]), saved_patch_grid(source_config))
    return {**state, **changed} if changed else state


def _fit_abs_pos_embed(pos: Tensor, grid: tuple[int, int], saved_grid: tuple[int, int] | None) -> Tensor:
    """An absolute embedding (1, H, W, C) (tessera) or (1, N, C) (official) -> (1, *grid, C).

    A 4-D embedding knows its grid; a flat one takes the saved config's, else a square one.
    """
    C = pos.shape[-1]
    if pos.ndim == 4:
        saved_grid = tuple(pos.shape[1:3])
    flat = fit_pos_grid(pos.reshape(1, -1, C), grid, 0, saved_grid, "abs_pos_embed")
    return flat.reshape(1, grid[0], grid[1], C) if flat.shape[1] == grid[0] * grid[1] else pos
