"""Tokenizer weights from diffusers (`VQModel`, `AutoencoderKL`) and taming-transformers (VQGAN).

tessera's module names are taming's, so a taming checkpoint (`state_dict` with keys
`encoder.`, `decoder.`, `quant_conv.`, `quantize.embedding.weight`, `loss.discriminator.`)
needs only three renames. diffusers renamed the same network (key map, tessera <- diffusers):

    {en,de}coder.conv_in / conv_out            <- same
    {en,de}coder.norm_out                      <- conv_norm_out
    encoder.down.i.block.j                     <- encoder.down_blocks.i.resnets.j
    encoder.down.i.downsample.conv             <- encoder.down_blocks.i.downsamplers.0.conv
    decoder.up.(L-1-i).block.j                 <- decoder.up_blocks.i.resnets.j   (diffusers counts up
    decoder.up.(L-1-i).upsample.conv           <- decoder.up_blocks.i.upsamplers.0.conv   from the bottom)
    *.mid.block_1 / block_2                    <- *.mid_block.resnets.0 / 1
    *.mid.attn_1.{norm, q, k, v, proj_out}     <- *.mid_block.attentions.0.{group_norm, to_q, to_k, to_v,
                                                  to_out.0}   (Linear (C, C) -> 1x1 conv (C, C, 1, 1))
    *.nin_shortcut                             <- *.conv_shortcut
    quantize.codebook                          <- quantize.embedding.weight

`from_diffusers(folder)` also reads the folder's config.json to size the model, and sets the
VQ loss to diffusers' ("legacy" beta placement) and `scaling_factor` to its value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from tessera.io.convert import register_converter

__all__ = ["config_from_diffusers", "from_diffusers", "state_dict_from_diffusers", "state_dict_from_taming"]

StateDict = dict[str, Tensor]

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_ATTN_LEAVES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_diffusers(key: str, levels: int) -> str:
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", key)
    if m:
        level = levels - 1 - int(m.group(1))
        part = "block." if m.group(2) == "resnets" else "upsample."
        key = f"decoder.up.{level}.{part}{m.group(3)}"
    key = re.sub(r"\.mid_block\.resnets\.0\.", ".mid.block_1.", key)
    key = re.sub(r"\.mid_block\.resnets\.1\.", ".mid.block_2.", key)
    m = re.match(r"^(.*)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", key)
    if m:
        key = f"{m.group(1)}.mid.attn_1.{_ATTN_LEAVES[m.group(2)]}.{m.group(3)}"
    key = key.replace(".conv_shortcut.", ".nin_shortcut.")
    return "quantize.codebook" if key == "quantize.embedding.weight" else key


def state_dict_from_diffusers(state: StateDict, levels: int) -> StateDict:
    """diffusers VQModel / AutoencoderKL keys -> tessera's, for an encoder of `levels` levels."""
    out: StateDict = {}
    for k, v in state.items():
        new = _rename_diffusers(k, levels)
        if ".attn_1." in new and new.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]  # Linear (C, C) -> 1x1 conv
        out[new] = v
    return out


def state_dict_from_taming(state: StateDict, with_discriminator: bool) -> StateDict:
    """taming's VQModel / VQGAN keys -> tessera's; the perceptual net and other loss state are dropped."""
    out: StateDict = {}
    for k, v in state.items():
        if k.startswith("loss."):
            if with_discriminator and k.startswith("loss.discriminator."):
                out[k[len("loss."):]] = v
            continue  # loss.perceptual_loss.* (LPIPS), loss.logvar: not part of the tokenizer
        out["quantize.codebook" if k == "quantize.embedding.weight" else k] = v
    return out


def _with_own_buffers(state: StateDict, model: nn.Module) -> StateDict:
    """Add the model's own values for the bookkeeping buffers foreign layouts lack (codebook usage
    counters, k-means flag, scaling_factor): they are state of tessera's training, not weights."""
    params = {n for n, _ in model.named_parameters()}
    for k, v in model.state_dict().items():
        if k not in state and k not in params:
            state[k] = v.clone()
    return state


@register_converter("tokenizer")
def convert_tokenizer(state: StateDict, model: nn.Module, source_config: dict | None) -> StateDict:
    """Detect the layout from the keys: diffusers (`down_blocks.`), taming (`loss.` / `quantize.embedding`)."""
    if any(".down_blocks." in k or ".mid_block." in k for k in state):
        return _with_own_buffers(state_dict_from_diffusers(state, len(model.config.channels)), model)
    if any(k.startswith("loss.") or k == "quantize.embedding.weight" for k in state):
        taming = state_dict_from_taming(state, with_discriminator="discriminator.main.0.weight" in model.state_dict())
        return _with_own_buffers(taming, model)
    return state


# ------------------------------------------------------------------ diffusers folders


def config_from_diffusers(config: dict) -> tuple[str, dict]:
    """(tessera builder name, config overrides) for a diffusers VQModel / AutoencoderKL config.json."""
    cls = config.get("_class_name", "")
    if cls not in ("VQModel", "AutoencoderKL"):
        raise ValueError(f"expected a diffusers VQModel or AutoencoderKL config, found _class_name={cls!r}")
    unsupported = {
        "down_block_types": [b for b in config.get("down_block_types", ()) if b != "DownEncoderBlock2D"],
        "up_block_types": [b for b in config.get("up_block_types", ()) if b != "UpDecoderBlock2D"],
        "act_fn": [] if config.get("act_fn", "silu") == "silu" else [config["act_fn"]],
        "norm_type": [] if config.get("norm_type", "group") == "group" else [config["norm_type"]],
        "use_quant_conv": [] if config.get("use_quant_conv", True) else [False],
        "use_post_quant_conv": [] if config.get("use_post_quant_conv", True) else [False],
    }
    bad = {k: v for k, v in unsupported.items() if v}
    if bad:
        raise ValueError(f"unsupported diffusers {cls} options {bad}; tessera's tokenizers use "
                         "DownEncoderBlock2D/UpDecoderBlock2D, SiLU, GroupNorm and both 1x1 convs")
    if config.get("out_channels", config.get("in_channels", 3)) != config.get("in_channels", 3):
        raise ValueError("in_channels != out_channels is not supported")
    kw = dict(
        in_chans=config.get("in_channels", 3),
        img_size=int(config.get("sample_size", 32) if not isinstance(config.get("sample_size"), list)
                     else config["sample_size"][0]),
        channels=tuple(config["block_out_channels"]),
        layers_per_block=config.get("layers_per_block", 1 if cls == "VQModel" else 2),
        norm_groups=config.get("norm_num_groups", 32),
        latent_channels=config.get("latent_channels", 3 if cls == "VQModel" else 4),
        mid_attention=config.get("mid_block_add_attention", True),
        pad_input=True,  # diffusers accepts any size the convolutions accept
    )
    if cls == "VQModel":
        kw.update(
            num_codes=config.get("num_vq_embeddings", 256),
            embed_dim=config.get("vq_embed_dim") or kw["latent_channels"],
            beta_placement="legacy",  # diffusers' VectorQuantizer(legacy=True)
            rec_loss="l1", perceptual_weight=0.0,
        )
        return "vqvae_f4", kw
    return "autoencoder_kl_f4", kw


def from_diffusers(folder: str | Path) -> nn.Module:
    """A tessera tokenizer from a diffusers `VQModel` / `AutoencoderKL` folder (config.json + weights)."""
    from tessera.core.registry import get_builder
    from tessera.io.checkpoint import CheckpointError, read_state_dict

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no config.json in {str(folder)!r}: expected a diffusers model folder")
    config = json.loads((folder / "config.json").read_text())
    name, kw = config_from_diffusers(config)
    weights = next((folder / w for w in _DIFFUSERS_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no weights in {str(folder)!r}: expected one of {list(_DIFFUSERS_WEIGHTS)}")
    model = get_builder(name)(**kw)
    state = state_dict_from_diffusers(read_state_dict(weights), len(kw["channels"]))
    state = _with_own_buffers(state, model)
    state["scaling_factor"] = torch.tensor(float(config.get("scaling_factor", 1.0)))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(folder)!r} does not match {type(model).__name__}: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    model.load_state_dict(state)
    return model
