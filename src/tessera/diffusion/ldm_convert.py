"""Weights and configs between tessera's LDMUNet and diffusers' UNet2DConditionModel.

The two are the same network when diffusers is configured with Stable Diffusion's defaults
(`flip_sin_to_cos=True, freq_shift=0`, conv proj_in/proj_out, GEGLU, no attention biases).
One difference of names: diffusers' `attention_head_dim` holds the number of heads
(diffusers #2011); tessera calls it `heads`. Key map (tessera -> diffusers):

    time_embed.fc{1,2}                  -> time_embedding.linear_{1,2}
    down.i.blocks.j.*                   -> down_blocks.i.resnets.j.*  (time_proj -> time_emb_proj, skip -> conv_shortcut)
    down.i.transformers.j.*             -> down_blocks.i.attentions.j.*
        blocks.k.{norm1,norm2,norm3}    -> transformer_blocks.k.{same}
        blocks.k.attn1.qkv              -> cat(attn1.to_q, to_k, to_v)   (rows: q, k, v)
        blocks.k.attn2.q / attn2.kv     -> attn2.to_q / cat(attn2.to_k, to_v)
        blocks.k.attn{1,2}.proj         -> attn{1,2}.to_out.0
        blocks.k.ff.proj / ff.fc2       -> ff.net.0.proj / ff.net.2
    down.i.resample.conv                -> down_blocks.i.downsamplers.0.conv
    up.i.* (same)                       -> up_blocks.i.*, up.i.resample -> upsamplers.0
    mid_block1 / mid_transformer / mid_block2 -> mid_block.resnets.0 / attentions.0 / resnets.1
    norm_out                            -> conv_norm_out

The table is written once, tessera -> diffusers; reading diffusers weights walks the
tessera model's own keys through it, so the two directions cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from tessera.diffusion.ldm_unet import LDMUNet, LDMUNetConfig
from tessera.io.convert import register_converter

__all__ = [
    "config_from_diffusers",
    "from_diffusers",
    "load_diffusers_folder",
    "state_dict_from_diffusers",
    "state_dict_to_diffusers",
    "to_diffusers",
    "to_diffusers_config",
]

StateDict = dict[str, Tensor]

_PREFIXES = (
    ("time_embed.fc1.", "time_embedding.linear_1."),
    ("time_embed.fc2.", "time_embedding.linear_2."),
    ("norm_out.", "conv_norm_out."),
    ("mid_block1.", "mid_block.resnets.0."),
    ("mid_block2.", "mid_block.resnets.1."),
    ("mid_transformer.", "mid_block.attentions.0."),
    ("down.{i}.blocks.", "down_blocks.{i}.resnets."),
    ("down.{i}.transformers.", "down_blocks.{i}.attentions."),
    ("down.{i}.resample.", "down_blocks.{i}.downsamplers.0."),
    ("up.{i}.blocks.", "up_blocks.{i}.resnets."),
    ("up.{i}.transformers.", "up_blocks.{i}.attentions."),
    ("up.{i}.resample.", "up_blocks.{i}.upsamplers.0."),
)
_PREFIX_RULES = tuple(
    ("^" + re.escape(t).replace(r"\{i\}", r"(\d+)"), d.replace("{i}", r"\1")) for t, d in _PREFIXES
)
_LEAF_RULES = (
    (r"\.time_proj\.", ".time_emb_proj."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.blocks\.", r"\1.transformer_blocks."),
    (r"\.attn([12])\.proj\.", r".attn\1.to_out.0."),
    (r"\.attn2\.q\.", ".attn2.to_q."),
    (r"\.ff\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.fc2\.", ".ff.net.2."),
)
# fused tessera tensors and the diffusers tensors they concatenate (along the output rows)
_FUSED = ((".attn1.qkv.", ("to_q", "to_k", "to_v")), (".attn2.kv.", ("to_k", "to_v")))


def diffusers_keys(key: str) -> list[str]:
    """The diffusers key(s) of one tessera key (several for a fused q/k/v weight)."""
    for pat, rep in _PREFIX_RULES:
        key, n = re.subn(pat, rep, key)
        if n:
            break
    for fused, parts in _FUSED:
        if fused in key:
            head, leaf = key.split(fused)
            attn = fused.split(".")[1]  # attn1 / attn2
            key = re.sub(r"(attentions\.\d+)\.blocks\.", r"\1.transformer_blocks.", head)
            return [f"{key}.{attn}.{p}.{leaf}" for p in parts]
    for pat, rep in _LEAF_RULES:
        key = re.sub(pat, rep, key)
    return [key]


def state_dict_to_diffusers(state: Mapping[str, Tensor]) -> StateDict:
    """tessera LDMUNet state dict -> UNet2DConditionModel state dict (fused projections split)."""
    out: StateDict = {}
    for key, v in state.items():
        names = diffusers_keys(key)
        for name, part in zip(names, v.chunk(len(names), dim=0)):
            out[name] = part.clone() if len(names) > 1 else v
    return out


def state_dict_from_diffusers(state: Mapping[str, Tensor], model: nn.Module) -> StateDict:
    """UNet2DConditionModel state dict -> `model`'s keys (q/k/v fused); KeyError-free: names what is missing."""
    out: StateDict = {}
    missing: list[str] = []
    for key in model.state_dict():
        names = diffusers_keys(key)
        if any(n not in state for n in names):
            missing += [n for n in names if n not in state]
            continue
        out[key] = torch.cat([state[n] for n in names], dim=0) if len(names) > 1 else state[names[0]]
    if missing:
        raise ValueError(
            f"diffusers UNet2DConditionModel weights lack {len(missing)} tensors the tessera model needs, "
            f"e.g. {missing[:4]}; is the config (levels, depth, transformer levels) the same?"
        )
    return out


def to_diffusers_config(config: LDMUNetConfig) -> dict[str, Any]:
    """Keyword arguments of a diffusers UNet2DConditionModel with `config`'s architecture."""
    L = len(config.widths)
    cross = [i in config.transformer_levels for i in range(L)]
    return dict(
        sample_size=config.img_size,
        in_channels=config.in_chans,
        out_channels=config.in_chans,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross)),
        block_out_channels=tuple(config.widths),
        layers_per_block=config.depth,
        transformer_layers_per_block=config.transformer_depth,
        downsample_padding=1,
        dropout=config.dropout,
        act_fn="silu",
        norm_num_groups=config.norm_groups,
        norm_eps=config.norm_eps,
        cross_attention_dim=config.context_dim,
        attention_head_dim=tuple(config.heads),  # diffusers' name for the number of heads (#2011)
        use_linear_projection=False,
    )


_REQUIRED = {
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "act_fn": "silu",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "use_linear_projection": False,
    "only_cross_attention": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "num_class_embeds": None,
    "dual_cross_attention": False,
    "center_input_sample": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "time_embedding_dim": None,
    "time_cond_proj_dim": None,
    "attention_type": "default",
}


def _per_level(value: Any, L: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * L


def config_from_diffusers(dcfg: Mapping[str, Any]) -> LDMUNetConfig:
    """LDMUNetConfig of a diffusers UNet2DConditionModel config; ValueError naming any option tessera lacks."""
    for k, want in _REQUIRED.items():
        if k in dcfg and dcfg[k] != want:
            raise ValueError(f"diffusers option {k}={dcfg[k]!r} is not supported (tessera's LDMUNet needs {want!r})")
    widths = tuple(dcfg["block_out_channels"])
    L = len(widths)
    if dcfg.get("in_channels", 4) != dcfg.get("out_channels", 4):
        raise ValueError("tessera's LDMUNet predicts as many channels as it reads (in_channels == out_channels)")
    down = list(dcfg["down_block_types"])
    up = list(dcfg["up_block_types"])
    known = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}
    cross_down = [t == "CrossAttnDownBlock2D" for t in down]
    cross_up = [t == "CrossAttnUpBlock2D" for t in up][::-1]
    if any(t not in known for t in down + up) or cross_down != cross_up:
        raise ValueError(
            f"block types must be (CrossAttn)DownBlock2D / (CrossAttn)UpBlock2D with cross-attention at "
            f"the same levels down and up; got {down} / {up}"
        )
    heads = dcfg.get("num_attention_heads") or dcfg.get("attention_head_dim", 8)  # diffusers #2011: "head_dim" = heads
    depth_t = set(_per_level(dcfg.get("transformer_layers_per_block", 1), L))
    if len(depth_t) != 1:
        raise ValueError(f"transformer_layers_per_block must be the same at every level, got {sorted(depth_t)}")
    for k in ("layers_per_block", "cross_attention_dim"):
        if isinstance(dcfg.get(k), (list, tuple)):
            raise ValueError(f"a per-level {k} is not supported, got {dcfg[k]}")
    img = dcfg.get("sample_size") or 8
    img = img if isinstance(img, int) else img[0]
    return LDMUNetConfig(
        img_size=img,
        in_chans=dcfg.get("in_channels", 4),
        widths=widths,
        depth=dcfg.get("layers_per_block", 2),
        transformer_levels=tuple(i for i, a in enumerate(cross_down) if a),
        heads=_per_level(heads, L),
        transformer_depth=depth_t.pop(),
        context_dim=dcfg.get("cross_attention_dim", 1280),
        dropout=dcfg.get("dropout", 0.0),
        norm_groups=dcfg.get("norm_num_groups", 32),
        norm_eps=dcfg.get("norm_eps", 1e-5),
    )


def to_diffusers(model: LDMUNet) -> nn.Module:
    """A diffusers UNet2DConditionModel with `model`'s architecture and weights (needs diffusers)."""
    from diffusers import UNet2DConditionModel

    ref = UNet2DConditionModel(**to_diffusers_config(model.config))
    ref.load_state_dict(state_dict_to_diffusers(model.state_dict()), strict=True)
    return ref.train(model.training)


def from_diffusers(ref: nn.Module) -> LDMUNet:
    """A tessera LDMUNet with a diffusers UNet2DConditionModel's architecture and weights."""
    model = LDMUNet(config_from_diffusers(dict(ref.config)))
    model.load_state_dict(state_dict_from_diffusers(ref.state_dict(), model), strict=True)
    return model.train(ref.training)


def load_diffusers_folder(folder: str | Path, name: str = "ldm_unet_f4") -> LDMUNet:
    """Read a folder written by `UNet2DConditionModel.save_pretrained` (config.json +
    diffusion_pytorch_model.safetensors) into the tessera model `name` built with its config."""
    from tessera.core.base import config_to_dict
    from tessera.core.registry import create_model

    folder = Path(folder)
    cfg_file, weights = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"not a diffusers UNet folder: {str(f)!r} is missing")
    config = config_from_diffusers(json.loads(cfg_file.read_text()))
    return create_model(name, checkpoint=weights, **config_to_dict(config))


@register_converter("ldm_unet")
def _convert_ldm_unet(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """Checkpoint converter: diffusers UNet2DConditionModel keys -> tessera's; tessera's unchanged."""
    if any(k.startswith(("down_blocks.", "up_blocks.", "time_embedding.")) for k in state):
        return state_dict_from_diffusers(state, model)
    return state
