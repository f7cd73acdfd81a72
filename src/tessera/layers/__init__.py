"""Building blocks shared by every tessera model."""

from tessera.layers.attention import Attention, CrossAttention, attend
from tessera.layers.checkpoint import checkpointed
from tessera.layers.drop_path import DropPath, drop_path, drop_path_rates
from tessera.layers.fast_linear import FastLinear, fast_linear_choices, use_fast_linear
from tessera.layers.mlp import Mlp
from tessera.layers.patch_embed import PatchEmbed, check_image_batch, check_token_mask, to_2tuple
from tessera.layers.pos_embed import (
    RelativePositionBias,
    relative_position_index,
    resample_abs_pos_embed,
    resize_rel_pos_table,
    same_grid,
    sincos_2d,
)
from tessera.layers.window_attention import (
    WindowAttention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "Attention",
    "CrossAttention",
    "DropPath",
    "FastLinear",
    "Mlp",
    "PatchEmbed",
    "RelativePositionBias",
    "attend",
    "check_image_batch",
    "checkpointed",
    "check_token_mask",
    "drop_path",
    "drop_path_rates",
    "fast_linear_choices",
    "relative_position_index",
    "resample_abs_pos_embed",
    "resize_rel_pos_table",
    "same_grid",
    "sincos_2d",
    "to_2tuple",
    "use_fast_linear",
    "WindowAttention",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
