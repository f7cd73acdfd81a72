"""Load Hugging Face transformers' `Dinov2Model` / `Dinov2WithRegistersModel` weights into tessera's ViT.

DINOv2's backbone is a pre-LN ViT with two details its checkpoints need,
both fields of `tessera.models.vit.ViTConfig`: layer scale (a learned
per-channel gamma on each residual branch, `layer_scale_init`) and register
tokens (Darcet et al., arXiv:2309.16588: `num_register_tokens` extra prefix
tokens without position embedding, inserted after the class token).

    model = load_dinov2_transformers("path/to/dinov2-small")      # a folder written by save_pretrained

reads transformers' config.json for the architecture and maps the keys:

    embeddings.cls_token / register_tokens / mask_token / position_embeddings -> cls_token / reg_token / mask_token / pos_embed
    encoder.layer.i.attention.{query,key,value | q_proj,k_proj,v_proj}         -> blocks.i.attn.qkv (fused [q; k; v])
    encoder.layer.i.layer_scale{1,2}.lambda1                                   -> blocks.i.ls{1,2}.gamma
    layernorm                                                                  -> norm
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]

_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_QKV = {
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def is_dinov2_state(state: StateDict) -> bool:
    """True for transformers' DINOv2 layout (layer scale under `layer_scale1.lambda1`)."""
    return any(k.endswith("layer_scale1.lambda1") for k in state)


def convert_dinov2_state(state: StateDict, own: StateDict | None = None) -> StateDict:
    """transformers' DINOv2 keys -> tessera ViT keys (q, k, v fused; a leading `dinov2.` is dropped).

    Args:
        state: the transformers state dict.
        own: the target model's state dict: the mask token is kept only when the
            model has one (shaped like it), else dropped.
    """
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        name = key[len("dinov2."):] if key.startswith("dinov2.") else key
        if name in _TOP:
            new = _TOP[name]
            if new == "mask_token":
                if own is None or "mask_token" not in own:
                    continue
                value = value.reshape(own["mask_token"].shape)
            out[new] = value
            continue
        m = _LAYER_RE.match(name)
        if m is None:
            raise ValueError(f"unknown key {key!r} in a transformers DINOv2 checkpoint")
        i, sub, kind = int(m.group(1)), m.group(2), m.group(3)
        if sub in _QKV:
            qkv.setdefault((i, kind), {})[_QKV[sub]] = value
        elif sub in _LAYER:
            out[f"blocks.{i}.{_LAYER[sub]}.{'gamma' if kind == 'lambda1' else kind}"] = value
        else:
            raise ValueError(f"unknown key {key!r} in a transformers DINOv2 checkpoint")
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {i} of the checkpoint lacks some of query/key/value {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def vit_config_from_transformers(cfg: dict[str, Any]) -> dict[str, Any]:
    """tessera ViT config fields from a transformers DINOv2 config.json."""
    if cfg.get("use_swiglu_ffn"):
        raise ValueError("DINOv2 checkpoints with a SwiGLU MLP (ViT-g) are not supported by tessera's ViT")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"tessera's ViT uses GELU; the checkpoint uses {cfg.get('hidden_act')!r}")
    return {
        "img_size": cfg.get("image_size", 518),
        "patch_size": cfg.get("patch_size", 14),
        "in_chans": cfg.get("num_channels", 3),
        "embed_dim": cfg["hidden_size"],
        "depth": cfg["num_hidden_layers"],
        "num_heads": cfg["num_attention_heads"],
        "mlp_ratio": float(cfg.get("mlp_ratio", 4)),
        "qkv_bias": cfg.get("qkv_bias", True),
        "norm_eps": cfg.get("layer_norm_eps", 1e-6),
        "layer_scale_init": cfg.get("layerscale_value", 1.0),
        "num_register_tokens": cfg.get("num_register_tokens", 0),
        # the with-registers release resamples its positions with antialiasing, the original does not
        "pos_embed_antialias": cfg.get("model_type") == "dinov2_with_registers",
        "dynamic_img_size": True,  # DINOv2 interpolates its positions to any input size
        "num_classes": 0,
    }


def load_dinov2_transformers(folder: str | Path, **overrides: Any) -> nn.Module:
    """A tessera ViT (an encoder, no head) with the weights of a transformers DINOv2 folder.

    Args:
        folder: written by `Dinov2Model.save_pretrained` (config.json + weights).
        **overrides: ViT config fields to change (e.g. use_mask_token=True for iBOT).
    """
    from tessera.core.registry import create_model
    from tessera.io.checkpoint import read_state_dict

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{str(folder)!r} has no config.json: expected a transformers DINOv2 folder")
    cfg = json.loads(cfg_path.read_text())
    if not str(cfg.get("model_type", "")).startswith("dinov2"):
        raise ValueError(f"{cfg_path} is a {cfg.get('model_type')!r} config, not DINOv2")
    model = create_model("vit_base_patch16_224", **{**vit_config_from_transformers(cfg), **overrides})
    state = convert_dinov2_state(read_state_dict(folder), model.state_dict())
    missing = sorted(set(model.state_dict()) - set(state))
    if missing == ["mask_token"]:  # asked for a mask token the checkpoint lacks: keep the fresh one
        state["mask_token"] = model.state_dict()["mask_token"]
    model.load_state_dict(state, strict=True)
    model.arch = "vit_base_patch16_224"
    return model.eval()
