"""Weights and configs between tessera's UNet and diffusers' UNet2DModel.

The two networks are the same DDPM UNet when diffusers is configured with
DDPM's time embedding (`flip_sin_to_cos=False, freq_shift=1`), SiLU, GroupNorm
before attention, `downsample_padding=1` and one attention layout for all
levels. Key map (tessera <- diffusers):

    time_embed.fc{1,2}               <- time_embedding.linear_{1,2}
    class_embed                      <- class_embedding
    down.i.blocks.j.{norm1,conv1,norm2,conv2}
                                     <- down_blocks.i.resnets.j.{same}
    down.i.blocks.j.time_proj        <- down_blocks.i.resnets.j.time_emb_proj
    down.i.blocks.j.skip             <- down_blocks.i.resnets.j.conv_shortcut
    down.i.attns.j.norm              <- down_blocks.i.attentions.j.group_norm
    down.i.attns.j.attn.qkv          <- cat(attentions.j.to_q, to_k, to_v)   (rows: q, k, v)
    down.i.attns.j.attn.proj         <- attentions.j.to_out.0
    down.i.resample.conv             <- down_blocks.i.downsamplers.0.conv
    up.i.* (same pattern)            <- up_blocks.i.*, up.i.resample.conv <- upsamplers.0.conv
    mid_block1 / mid_attn / mid_block2 <- mid_block.resnets.0 / attentions.0 / resnets.1
    norm_out                         <- conv_norm_out

Old diffusers attention names (query / key / value / proj_attn) are read too.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from tessera.diffusion.unet import UNet, UNetConfig
from tessera.io.convert import register_converter

__all__ = [
    "config_from_diffusers",
    "from_diffusers",
    "state_dict_from_diffusers",
    "state_dict_to_diffusers",
    "to_diffusers",
    "to_diffusers_config",
]

StateDict = dict[str, Tensor]

# (tessera prefix, diffusers prefix) for everything but attention's q/k/v; "{i}" is a
# level index. One table, compiled in both directions so the two cannot drift apart.
_BLOCK_PREFIXES = (
    ("time_embed.fc1.", "time_embedding.linear_1."),
    ("time_embed.fc2.", "time_embedding.linear_2."),
    ("class_embed.", "class_embedding."),
    ("norm_out.", "conv_norm_out."),
    ("mid_block1.", "mid_block.resnets.0."),
    ("mid_block2.", "mid_block.resnets.1."),
    ("mid_attn.", "mid_block.attentions.0."),
    ("down.{i}.blocks.", "down_blocks.{i}.resnets."),
    ("down.{i}.attns.", "down_blocks.{i}.attentions."),
    ("down.{i}.resample.", "down_blocks.{i}.downsamplers.0."),
    ("up.{i}.blocks.", "up_blocks.{i}.resnets."),
    ("up.{i}.attns.", "up_blocks.{i}.attentions."),
    ("up.{i}.resample.", "up_blocks.{i}.upsamplers.0."),
)


def _prefix_rule(src: str, dst: str) -> tuple[str, str]:
    """Anchored regex and replacement that turn prefix `src` into `dst`, carrying the level index."""
    return "^" + re.escape(src).replace(r"\{i\}", r"(\d+)"), dst.replace("{i}", r"\1")


_BLOCK_RENAMES = tuple(_prefix_rule(t, d) for t, d in _BLOCK_PREFIXES)
_BLOCK_RENAMES_BACK = tuple(_prefix_rule(d, t) for t, d in _BLOCK_PREFIXES)
_LEAF_RENAMES = (  # inside a resnet / attention
    (r"\.time_proj\.", ".time_emb_proj."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.\d+)\.attn\.proj\.", r"\1.to_out.0."),
)
# the inverse maps, diffusers -> tessera
_LEAF_RENAMES_BACK = (
    (".time_emb_proj.", ".time_proj."),
    (".conv_shortcut.", ".skip."),
    (".group_norm.", ".norm."),
    (".to_out.0.", ".attn.proj."),
)
_OLD_ATTN_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _tessera_to_diffusers_key(key: str) -> str:
    for pat, rep in _BLOCK_RENAMES:
        key, n = re.subn(pat, rep, key)
        if n:
            break
    for pat, rep in _LEAF_RENAMES:
        key = re.sub(pat, rep, key)
    return key


def state_dict_to_diffusers(state: Mapping[str, Tensor]) -> StateDict:
    """tessera UNet state dict -> UNet2DModel state dict (the fused qkv is split into to_q/k/v)."""
    out: StateDict = {}
    for key, v in state.items():
        m = re.match(r"^(.*)\.attn\.qkv\.(weight|bias)$", key)
        if m:
            prefix = _tessera_to_diffusers_key(m.group(1) + ".x").removesuffix(".x")
            for name, part in zip(("to_q", "to_k", "to_v"), v.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{m.group(2)}"] = part.clone()
        else:
            out[_tessera_to_diffusers_key(key)] = v
    return out


def state_dict_from_diffusers(state: Mapping[str, Tensor]) -> StateDict:
    """UNet2DModel state dict -> tessera UNet state dict (to_q/k/v are fused into qkv)."""
    fixed: dict[str, Tensor] = {}
    for key, v in state.items():
        parts = key.rsplit(".", 2)
        if len(parts) == 3 and parts[1] in _OLD_ATTN_NAMES and ".attentions." in key:
            key = f"{parts[0]}.{_OLD_ATTN_NAMES[parts[1]]}.{parts[2]}"
        fixed[key] = v
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, v in fixed.items():
        m = re.match(r"^(.*attentions\.\d+)\.(to_q|to_k|to_v)\.(weight|bias)$", key)
        if m:
            qkv.setdefault(f"{m.group(1)}|{m.group(3)}", {})[m.group(2)] = v
            continue
        out[_diffusers_to_tessera_key(key)] = v
    for k, parts in qkv.items():
        prefix, kind = k.split("|")
        if set(parts) != {"to_q", "to_k", "to_v"}:
            raise ValueError(f"attention {prefix!r} lacks some of to_q/to_k/to_v ({kind}); found {sorted(parts)}")
        fused = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]], dim=0)
        out[_diffusers_to_tessera_key(prefix + ".x").removesuffix(".x") + f".attn.qkv.{kind}"] = fused
    return out


def _diffusers_to_tessera_key(key: str) -> str:
    for old, new in _LEAF_RENAMES_BACK:
        key = key.replace(old, new)
    for pat, rep in _BLOCK_RENAMES_BACK:
        key, n = re.subn(pat, rep, key)
        if n:
            break
    return key


def to_diffusers_config(config: UNetConfig) -> dict[str, Any]:
    """Keyword arguments of a diffusers UNet2DModel with the same architecture as `config`."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attn_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attn_levels))
    return dict(
        sample_size=config.img_size,
        in_channels=config.in_chans,
        out_channels=config.in_chans,
        time_embedding_type="positional",
        flip_sin_to_cos=False,  # DDPM: [sin, cos]
        freq_shift=1,  # DDPM: frequencies over half_dim - 1
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.widths),
        layers_per_block=config.depth,
        downsample_padding=1,
        dropout=config.dropout,
        act_fn="silu",
        attention_head_dim=config.head_dim,
        norm_num_groups=config.norm_groups,
        norm_eps=config.norm_eps,
        num_class_embeds=config.num_classes or None,
    )


_REQUIRED = {
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 1,
    "act_fn": "silu",
    "resnet_time_scale_shift": "default",
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2D",
    "add_attention": True,
    "class_embed_type": None,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "mid_block_scale_factor": 1,
}


def config_from_diffusers(dcfg: Mapping[str, Any]) -> UNetConfig:
    """UNetConfig of a diffusers UNet2DModel config; ValueError naming any option tessera lacks."""
    for k, want in _REQUIRED.items():
        if k in dcfg and dcfg[k] != want and not (want == 1 and dcfg[k] == 1.0):
            raise ValueError(f"diffusers option {k}={dcfg[k]!r} is not supported (tessera's UNet needs {want!r})")
    widths = tuple(dcfg["block_out_channels"])
    if dcfg.get("in_channels", 3) != dcfg.get("out_channels", 3):
        raise ValueError("tessera's UNet predicts as many channels as it reads (in_channels == out_channels)")
    if dcfg.get("time_embedding_dim") not in (None, 4 * widths[0]):
        raise ValueError(f"time_embedding_dim must be 4 x block_out_channels[0] = {4 * widths[0]}")
    if dcfg.get("attn_norm_num_groups") not in (None, dcfg.get("norm_num_groups", 32)):
        raise ValueError("attn_norm_num_groups must equal norm_num_groups")
    down_attn = [t == "AttnDownBlock2D" for t in dcfg["down_block_types"]]
    up_attn = [t == "AttnUpBlock2D" for t in dcfg["up_block_types"]][::-1]
    known = {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"}
    unknown = [t for t in (*dcfg["down_block_types"], *dcfg["up_block_types"]) if t not in known]
    if unknown or down_attn != up_attn:
        raise ValueError(
            f"block types must be (Attn)DownBlock2D / (Attn)UpBlock2D with attention at the same levels "
            f"down and up; got {dcfg['down_block_types']} / {dcfg['up_block_types']}"
        )
    img = dcfg.get("sample_size") or 32
    img = img if isinstance(img, int) else img[0]
    return UNetConfig(
        img_size=img,
        in_chans=dcfg.get("in_channels", 3),
        widths=widths,
        depth=dcfg.get("layers_per_block", 2),
        attn_resolutions=tuple(img >> i for i, a in enumerate(down_attn) if a),
        head_dim=dcfg.get("attention_head_dim", 8),
        dropout=dcfg.get("dropout", 0.0),
        num_classes=dcfg.get("num_class_embeds") or 0,
        norm_groups=dcfg.get("norm_num_groups", 32),
        norm_eps=dcfg.get("norm_eps", 1e-5),
    )


def to_diffusers(model: UNet) -> nn.Module:
    """A diffusers UNet2DModel with `model`'s architecture and weights (needs diffusers)."""
    from diffusers import UNet2DModel

    ref = UNet2DModel(**to_diffusers_config(model.config))
    ref.load_state_dict(state_dict_to_diffusers(model.state_dict()), strict=True)
    return ref.eval() if not model.training else ref


def from_diffusers(ref: nn.Module) -> UNet:
    """A tessera UNet with a diffusers UNet2DModel's architecture and weights."""
    model = UNet(config_from_diffusers(dict(ref.config)))
    model.load_state_dict(state_dict_from_diffusers(ref.state_dict()), strict=True)
    return model.train(ref.training)


@register_converter("unet")
def _convert_unet_checkpoint(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """Checkpoint converter: diffusers UNet2DModel keys -> tessera's; tessera's unchanged."""
    if any(k.startswith(("down_blocks.", "up_blocks.", "time_embedding.")) for k in state):
        return state_dict_from_diffusers(state)
    return state
