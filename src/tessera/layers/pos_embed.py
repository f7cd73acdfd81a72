"""Position encodings of the notes: additive absolute (learned or sine-cosine),
relative (a learned bias per query-key offset, added to the attention scores),
and resampling of a learned grid to another resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.layers.patch_embed import to_2tuple


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine embedding (MAE / ViT-style), shape (H*W, dim)."""
    if dim % 4:
        raise ValueError(f"sine-cosine embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    y = y.reshape(-1, 1) * omega  # (N, dim/4)
    x = x.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def same_grid(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """a == b when that is known without assuming it: under torch.export with symbolic sizes an
    unprovable equality is False (and the resampling, an exact identity at equal sizes, runs), so
    no size gets specialised; in eager mode it is plain `==`."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return all(statically_known_true(x == y) for x, y in zip(a, b)) and len(a) == len(b)


def resample_abs_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = False,
) -> Tensor:
    """Bicubic-resize a learned (1, prefix + H*W, C) position grid to `new_grid`.

    Resizes *by size*, not by scale factor, so rectangular targets work; the
    prefix entries (CLS, distillation token) are kept as they are. `mode`
    "bilinear" is what transformers' DPT uses.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens; pass old_grid")
        old_grid = (side, side)
    if same_grid(old_grid, new_grid):
        return pos_embed
    C = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], C).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """(N, N) index into a ((2Mh-1)(2Mw-1)) bias table for every query-key pair of a window."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N) offsets in [-(M-1), M-1]
    rel[0] += wh - 1
    rel[1] += ww - 1
    return rel[0] * (2 * ww - 1) + rel[1]


def resize_rel_pos_table(table: Tensor, new_window: tuple[int, int], old_window: tuple[int, int] | None = None) -> Tensor:
    """Bicubic-resize a ((2Mh-1)(2Mw-1), heads) bias table to another window size."""
    L, heads = table.shape
    if old_window is None:
        side = int(round(L**0.5))
        old_window = ((side + 1) // 2, (side + 1) // 2)
    old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old == new:
        return table
    grid = table.T.reshape(1, heads, *old).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.to(table.dtype)


class RelativePositionBias(nn.Module):
    """Learned bias B[h, i, j] = table[offset(i, j), h] for the tokens of a Mh x Mw grid.

    The table has (2Mh-1)(2Mw-1) rows, one per possible offset; the index is
    derived, so it is a non-persistent buffer.
    """

    def __init__(self, window: int | tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window = to_2tuple(window)
        wh, ww = self.window
        self.table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_position_index(self.window), persistent=False)

    def forward(self) -> Tensor:
        """The bias, shape (heads, N, N) with N = Mh * Mw."""
        N = self.index.shape[0]
        return self.table[self.index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
