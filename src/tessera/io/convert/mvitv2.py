"""MViTv2 checkpoints: timm's (and the official release's, as timm stores it) layout -> tessera's.

tessera keeps timm's module names, so only the head moves (`head.fc.` -> `head.`).
Relative position tables of another length are resized by the model itself
(`tessera.models.mvitv2.rel_pos_along`), so they load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from tessera.io.convert import register_converter

StateDict = dict[str, Tensor]


@register_converter("mvitv2")
def convert(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """timm's keys -> tessera's; a rel-pos table of another length is linearly resized to the model's."""
    own = model.state_dict()
    out: StateDict = {}
    for key, value in state.items():
        key = key.replace("head.fc.", "head.", 1) if key.startswith("head.fc.") else key
        if "rel_pos_" in key and key in own and value.shape[0] != own[key].shape[0]:
            from tessera.models.mvitv2 import resize_rel_pos

            value = resize_rel_pos(value, own[key].shape[0])
        out[key] = value
    return out
