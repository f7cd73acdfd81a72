"""Swin-V2 checkpoints: Hugging Face transformers' and timm's / the official layout -> tessera's.

transformers (`Swinv2Model`, `Swinv2ForImageClassification`): separate
query / key / value (the key without bias), the CPB MLP as
`continuous_position_bias_mlp`, post-norms as `layernorm_before/after`, patch
merging at the *end* of stage i (`encoder.layers.i.downsample`), which is the
start of tessera's stage i + 1. timm (>= 0.9) and tessera share module names
(`layers.i` -> `stages.i`, `head.fc` -> `head`); timm's `k_bias` is a zero buffer.
The continuous bias is a function of the window, so nothing is resampled:
a checkpoint loads at any window size (set `pretrained_window_sizes` to the
window it was trained with).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from tessera.io.convert import register_converter
from tessera.io.convert.common import fuse_qkv

StateDict = dict[str, Tensor]

_HF_BLOCK = {
    "attention.self.logit_scale": "attn.logit_scale",
    "attention.self.continuous_position_bias_mlp.0.weight": "attn.cpb_mlp.0.weight",
    "attention.self.continuous_position_bias_mlp.0.bias": "attn.cpb_mlp.0.bias",
    "attention.self.continuous_position_bias_mlp.2.weight": "attn.cpb_mlp.2.weight",
    "attention.self.query.bias": "attn.q_bias",
    "attention.self.value.bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
}
_HF_TOP = {
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.norm.weight": "patch_embed.norm.weight",
    "embeddings.norm.bias": "patch_embed.norm.bias",
    "embeddings.mask_token": "mask_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def from_transformers(state: StateDict) -> StateDict:
    """transformers' Swinv2 keys -> tessera's (q, k, v fused; downsample moved to the next stage)."""
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("swinv2.")
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", key)
        if m:
            out[f"stages.{int(m[1]) + 1}.patch_merge.{m[2]}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        if not m:
            out[key] = value  # unknown: reported by the loader
            continue
        prefix, rest = f"stages.{m[1]}.blocks.{m[2]}.", m[3]
        proj = re.fullmatch(r"attention\.self\.(query|key|value)\.weight", rest)
        if proj:
            qkv.setdefault(prefix + "attn.qkv.weight", {})[proj[1][0]] = value
        elif rest in _HF_BLOCK:
            out[prefix + _HF_BLOCK[rest]] = value
        else:
            out[prefix + rest] = value
    out.update(fuse_qkv(qkv, "transformers Swinv2"))
    return out


def from_timm(state: StateDict) -> StateDict:
    """timm's Swin-V2 keys -> tessera's: `layers.` -> `stages.`, `downsample` -> `patch_merge`, `head.fc` -> `head`."""
    out: StateDict = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "relative_coords_table", "attn_mask", ".k_bias")):
            continue  # derived buffers, rebuilt here
        key = re.sub(r"^layers\.(\d+)\.downsample\.", r"stages.\1.patch_merge.", key)
        key = re.sub(r"^layers\.", "stages.", key)
        key = key.replace("head.fc.", "head.")
        out[key] = value
    return out


@register_converter("swinv2")
def convert(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """Detect the layout from the keys and return tessera's Swin-V2 state dict."""
    if any("continuous_position_bias_mlp" in k for k in state):
        return from_transformers(state)
    if any(k.startswith("layers.") for k in state):
        return from_timm(state)
    return state
