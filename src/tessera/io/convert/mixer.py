"""Checkpoint converter for the mixer family (MLP-Mixer).

tessera's Mixer uses timm's module names (stem.proj, blocks.i.norm1,
blocks.i.mlp_tokens.fc1/fc2, blocks.i.norm2, blocks.i.mlp_channels.fc1/fc2,
norm, head), so timm's checkpoints (including those timm converted from the
official JAX release) load as they are. timm's `stem.norm` is an Identity and
stores nothing. Any other difference is reported by the loader, which names
the missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

from torch import nn

from tessera.io.convert import StateDict, register_converter


@register_converter("mixer")
def convert_mixer(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """timm / tessera Mixer weights -> tessera's layout: the same names, returned unchanged."""
    return state
