"""What every converter needs beyond renaming keys: q/k/v fusion, position-grid
fitting and relative-bias-table fitting.

Each helper decides the *source* geometry the same way for every family:
the saved tessera config when it has one (it knows a 4 x 6 grid or a (4, 6)
window from a 6 x 4 one with the same number of entries), else the model's own
geometry when the sizes already fit, else a square one (timm's,
transformers' and the official files do not say; their grids are square).
When nothing fits, the tensor comes back unchanged and the loader reports the
key with both shapes.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from tessera.layers.patch_embed import to_2tuple
from tessera.layers.pos_embed import resample_abs_pos_embed, resize_rel_pos_table

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
QKV = ("q", "k", "v")


def fuse_qkv(parts: dict[str, dict[str, Tensor]], layout: str) -> StateDict:
    """Fuse separate query, key and value projections into one qkv tensor per key.

    Args:
        parts: target key (e.g. 'blocks.3.attn.qkv.weight') -> {'q': ..., 'k': ..., 'v': ...}.
        layout: the checkpoint layout, named in the error.

    Returns:
        {target key: torch.cat([q, k, v])}: rows ordered [q; k; v], as
        `nn.Linear(dim, 3 dim)` of tessera's (and timm's) attention expects.
    """
    out: StateDict = {}
    for key, found in parts.items():
        if set(found) != set(QKV):
            raise ValueError(
                f"{layout} checkpoint: {key!r} needs query, key and value projections, "
                f"found only {sorted(found)}"
            )
        out[key] = torch.cat([found[p] for p in QKV], dim=0)
    return out


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def fit_pos_grid(
    pos: Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int = 0,
    saved_grid: tuple[int, int] | None = None,
    name: str = "pos_embed",
) -> Tensor:
    """Bring a learned absolute position grid (1, prefix + N, C) to the model's (H, W) grid.

    Args:
        pos: the checkpoint's embedding, prefix entries (CLS, distillation) first.
        grid: the model's patch grid (H, W).
        num_prefix_tokens: entries before the grid, kept as they are.
        saved_grid: the grid the checkpoint was trained on, when known (a
            tessera config, or a (1, H, W, C) tensor's own shape).
        name: the key, for the log.

    Returns:
        (1, prefix + H W, C), bicubic-resampled by size when the source grid differs.
    """
    grid = to_2tuple(grid)
    n = pos.shape[1] - num_prefix_tokens
    if saved_grid is not None and saved_grid[0] * saved_grid[1] == n:
        old = to_2tuple(saved_grid)
    elif n == grid[0] * grid[1]:
        old = grid
    elif (side := _square_side(n)) is not None:
        old = (side, side)
    else:
        return pos  # cannot tell its grid: the loader names the key and both shapes
    if old == grid:
        return pos
    log.info("resampling %s from a %dx%d to a %dx%d grid (bicubic)", name, *old, *grid)
    return resample_abs_pos_embed(pos, grid, old, num_prefix_tokens)


def fit_rel_pos_table(
    table: Tensor,
    window: tuple[int, int],
    saved_window: tuple[int, int] | None = None,
    name: str = "rel_pos_bias.table",
) -> Tensor:
    """Bring a relative-bias table ((2M_h-1)(2M_w-1), heads) to the model's (M_h, M_w) window.

    Args:
        table: one row per offset (dy, dx), one column per head (notes 004: B is
            read from a (2M-1) x (2M-1) table).
        window: the model's window (Swin) or patch grid (a ViT with a relative bias).
        saved_window: the window the checkpoint was trained on, when known.
        name: the key, for the log.

    Returns:
        The table for `window`, bicubic-resized when the source window differs.
    """
    window = to_2tuple(window)
    rows = table.shape[0]

    def count(w: tuple[int, int]) -> int:
        return (2 * w[0] - 1) * (2 * w[1] - 1)

    if saved_window is not None and count(to_2tuple(saved_window)) == rows:
        old = to_2tuple(saved_window)
    elif count(window) == rows:
        old = window
    elif (side := _square_side(rows)) is not None and side % 2 == 1:
        old = ((side + 1) // 2, (side + 1) // 2)
    else:
        return table  # not a (2M-1)^2 table: the loader names the key and both shapes
    if old == window:
        return table
    log.info("resizing %s from window %s to %s (bicubic)", name, old, window)
    return resize_rel_pos_table(table, window, old)


def saved_value(source_config: dict | None, field: str) -> object | None:
    """A field of the config a tessera checkpoint was saved with (None for foreign files)."""
    return (source_config or {}).get(field)


def saved_patch_grid(source_config: dict | None) -> tuple[int, int] | None:
    """The patch grid a tessera checkpoint was trained on: ceil(img_size / patch_size), or None."""
    img, patch = saved_value(source_config, "img_size"), saved_value(source_config, "patch_size")
    if img is None or patch is None:
        return None
    (h, w), (ph, pw) = to_2tuple(img), to_2tuple(patch)
    return (-(-h // ph), -(-w // pw))
