"""Window attention of the Swin Transformer (Liu et al., 2021, arXiv:2103.14030; notes 004).

Self-attention restricted to non-overlapping M_h x M_w windows of a (B, H, W, C)
grid, with a learned relative position bias B added to the scores:

    A = Softmax(Q K^T / sqrt(d) + B + mask) V                 (one window)

The cost of all windows together is M^2 H W: linear in the image size for a
fixed M. Shifted windows (SW-MSA) are a cyclic shift (roll) of the grid by
(M_h/2, M_w/2) followed by the same partition; the additive `mask` stops
tokens from attending across the seams that the roll creates, so every token
only attends within its own sub-window of the shifted partition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tessera.layers.attention import attend
from tessera.layers.patch_embed import pad_amount, to_2tuple
from tessera.layers.pos_embed import RelativePositionBias

# Additive mask value between tokens of different sub-windows. The official
# code and Hugging Face use -100, and so do we, to give the same numbers:
# exp(-100) ~ 4e-44 is zero next to any unmasked term in fp32, and -100 is
# exactly representable in fp16 / bf16, where -1e9 would overflow to -inf.
# Never -inf: a row of -inf (a query with no allowed key) makes softmax NaN,
# and SDPA's kernels subtract the row max, where -inf - (-inf) is NaN too.
MASK_VALUE = -100.0


def cyclic_shift(x: Tensor, shift: tuple[int, int]) -> Tensor:
    """Roll a (B, H, W, C) map up and left by (s_h, s_w): the first rows / columns wrap to the end."""
    return torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if shift[0] or shift[1] else x


def reverse_cyclic_shift(x: Tensor, shift: tuple[int, int]) -> Tensor:
    """Undo `cyclic_shift`: roll a (B, H, W, C) map down and right by (s_h, s_w)."""
    return torch.roll(x, shifts=shift, dims=(1, 2)) if shift[0] or shift[1] else x


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Cut a (B, H, W, C) grid into windows: (B, nW, M_h*M_w, C), windows and tokens row-major.

    H and W must be multiples of the window (pad first).
    """
    wh, ww = window
    return rearrange(x, "B (nh wh) (nw ww) C -> B (nh nw) (wh ww) C", wh=wh, ww=ww)


def window_reverse(windows: Tensor, window: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition`: (B, nW, M_h*M_w, C) -> (B, H, W, C) for grid = (H, W)."""
    wh, ww = window
    return rearrange(windows, "B (nh nw) (wh ww) C -> B (nh wh) (nw ww) C", nh=grid[0] // wh, wh=wh, ww=ww)


def shifted_window_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """Additive mask of SW-MSA on the (already padded) grid, shape (nW, N, N), N = M_h*M_w.

    After rolling the grid by -shift, each axis holds three regions: the
    untouched part [0, L - M), the last window's first part [L - M, L - s)
    and the wrapped-around strip [L - s, L). Tokens of the same window may
    attend iff they are in the same region on both axes (0), else MASK_VALUE.
    """
    H, W = grid
    (wh, ww), (sh, sw) = window, shift
    if torch.compiler.is_compiling():  # symbolic sizes: a runtime assertion, not a branch on the size
        torch._check(H % wh == 0)
        torch._check(W % ww == 0)
    elif H % wh or W % ww:
        raise ValueError(f"grid {grid} is not a multiple of the window {window}; pad it first")
    # rolled row of offset a in window row i: i M_h + a (broadcast aranges, no reshape of a permuted
    # tensor: traced sizes stay symbolic); region of a row 0, 1 or 2
    y = torch.arange(H // wh)[:, None, None, None] * wh + torch.arange(wh)[None, None, :, None]
    x = torch.arange(W // ww)[None, :, None, None] * ww + torch.arange(ww)[None, None, None, :]
    rows = (y >= H - wh).long() + (y >= H - sh).long()
    cols = (x >= W - ww).long() + (x >= W - sw).long()
    region = (rows * 3 + cols).reshape(-1, wh * ww)  # (nh, nw, M_h, M_w) -> (nW, N)
    same = region[:, :, None] == region[:, None, :]  # (nW, N, N)
    return torch.zeros(same.shape).masked_fill_(~same, MASK_VALUE)


def pad_to_windows(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right to window multiples -> (B, Hp, Wp, C).

    Swin pads after the LayerNorm, as the official detection backbone does, so
    the padded tokens are zeros that take part in attention like any token.
    """
    (H, W), (wh, ww) = x.shape[1:3], window
    if not torch.compiler.is_compiling() and H % wh == 0 and W % ww == 0:
        return x  # eager: no copy; traced: one graph pads by (possibly) zero at every size
    return F.pad(x, (0, 0, 0, pad_amount(W, ww), 0, pad_amount(H, wh)))


def _sub_window_index(window: tuple[int, int], table_window: tuple[int, int]) -> Tensor:
    """(N, N) index into the bias table of a `table_window` for the pairs of a smaller window.

    The table holds one entry per offset (dy, dx); a smaller window uses the
    same entries for its (fewer) offsets, i.e. the centre of the table.
    """
    (wh, ww), (th, tw) = window, table_window
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    dy = ys[:, None] - ys[None, :] + th - 1  # (N, N) offsets moved to [0, 2 M_h - 2]
    dx = xs[:, None] - xs[None, :] + tw - 1
    return dy * (2 * tw - 1) + dx


class WindowAttention(nn.Module):
    """(S)W-MSA inside windows: multi-head attention with a learned relative position bias.

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        window: window (M_h, M_w) the bias table is learned for, (2M_h-1)(2M_w-1) rows per head.
        qkv_bias: learn a bias of the q, k, v projections.
        rel_pos: add the relative position bias B (False: plain QK^T/sqrt(d), the
            notes' "no pos." / "abs. pos." ablations).
        proj_drop: dropout after the output projection.
        appearance: keep the appearance term QK^T/sqrt(d) (the notes' "app.").
            False: Softmax(B + mask) V, weights from the relative position bias
            alone, the notes' "rel. pos. w/o app." ablation; there are then no
            q, k projections (`v` instead of `qkv`), and `rel_pos` is required.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | tuple[int, int],
        qkv_bias: bool = True,
        rel_pos: bool = True,
        proj_drop: float = 0.0,
        appearance: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if not appearance and not rel_pos:
            raise ValueError("appearance=False (attention from the bias alone) needs rel_pos=True")
        self.num_heads = num_heads
        self.window = to_2tuple(window)
        self.appearance = appearance
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias) if appearance else None
        self.v = None if appearance else nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_bias = RelativePositionBias(self.window, num_heads) if rel_pos else None
        self.fused: bool | str = "auto"  # False: the explicit softmax reference path of `attend`
        # dtype of the attention matmuls, None: the input's. Set explicitly by
        # `tessera.inference.optimize_for_inference` (fp32 math for bf16 weights on CPUs
        # without bf16 arithmetic); never chosen here.
        self.matmul_dtype: torch.dtype | None = None

    def relative_bias(self, window: tuple[int, int] | None = None) -> Tensor | None:
        """B of the notes, shape (h, N, N), for `window` (default: the learned one) or None without it.

        A window smaller than the learned one (a stage smaller than the window)
        reads the centre of the same table: the bias depends on the offset only.
        """
        if self.rel_pos_bias is None:
            return None
        window = self.window if window is None else tuple(window)
        if window == self.window:
            return self.rel_pos_bias()
        if window[0] > self.window[0] or window[1] > self.window[1]:
            raise ValueError(f"window {window} is larger than the learned window {self.window}")
        table = self.rel_pos_bias.table
        index = _sub_window_index(window, self.window).to(table.device)
        N = index.shape[0]
        return table[index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)

    def window_bias(
        self, mask: Tensor | None, window: tuple[int, int] | None = None, dtype: torch.dtype | None = None
    ) -> Tensor | None:
        """B + mask, the additive term of the scores: (nW, h, N, N) with a shift mask, (1, h, N, N)
        without (shared by every window), None with neither.

        Args:
            mask: the shift mask (nW, N, N) of SW-MSA, or None (W-MSA).
            window: the window the map was cut with (default: the learned one).
            dtype: dtype of the result (default: the table's, or the mask's).
        """
        bias = self.relative_bias(window)  # (h, N, N) or None
        if mask is not None:
            mask = mask[:, None]  # (nW, 1, N, N): the same mask for every head
            bias = mask if bias is None else bias + mask  # (nW, h, N, N) or (nW, 1, N, N)
        if bias is None:
            return None
        bias = bias if bias.ndim == 4 else bias[None]  # (1, h, N, N): shared by all windows
        N = bias.shape[-1]
        return bias.expand(-1, self.num_heads, N, N).to(dtype or bias.dtype).contiguous()

    def forward(self, x: Tensor, mask: Tensor | None = None, window: tuple[int, int] | None = None) -> Tensor:
        """Attention within each window: Softmax(Q K^T / sqrt(d) + B + mask) V, projected.

        Args:
            x: windows (B, nW, N, C), N = M_h * M_w tokens each (`window_partition`).
            mask: additive shift mask (nW, N, N) or None (W-MSA).
            window: the window x was cut with, if smaller than the learned one.

        Returns:
            (B, nW, N, C).
        """
        return self.attend_windows(x, self.window_bias(mask, window, self.matmul_dtype or x.dtype))

    def attend_windows(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """Projected attention of windows x (B, nW, N, C) with the additive term `bias` = B + mask
        of `window_bias`, (nW or 1, h, N, N) -> (B, nW, N, C)."""
        B, nW, N, C = x.shape
        dtype = x.dtype
        nb = 1 if bias is None else bias.shape[0]
        # SDPA's fused CPU kernel wants 4-D tensors (5-D ones fall back to the slow reference):
        # windows with the same bias fold into the batch axis, windows with their own bias
        # (the shift mask) into the head axis, so the bias broadcasts over the batch; the
        # bias must be 4-D as well for the fused kernel.
        bias = None if bias is None else bias.flatten(0, 1)[None]  # (1, nb h, N, N)
        if self.appearance:
            qkv = self.qkv(x)  # (B, nW, N, 3C)
            if self.matmul_dtype is not None:
                qkv = qkv.to(self.matmul_dtype)
            pattern = "B (g nb) N (three h d) -> three (B g) (nb h) N d"
            q, k, v = rearrange(qkv, pattern, nb=nb, three=3, h=self.num_heads)
            x = attend(q, k, v, bias, self.fused)  # (B g, nb h, N, d)
        else:  # "rel. pos. w/o app.": Softmax(B + mask) V, the same weights for every image
            v = self.v(x)
            if self.matmul_dtype is not None:
                v = v.to(self.matmul_dtype)
            v = rearrange(v, "B (g nb) N (h d) -> (B g) (nb h) N d", nb=nb, h=self.num_heads)
            x = bias.to(v.dtype).softmax(dim=-1) @ v  # (B g, nb h, N, d)
        # "(B g) (nb h) N d -> B (g nb) N (h d)": the head merge must copy; an explicit clone keeps
        # traced graphs (size-oblivious export) from taking it for a view
        x = x.unflatten(0, (B, nW // nb)).unflatten(2, (nb, self.num_heads)).permute(0, 1, 2, 4, 3, 5)
        x = x.clone(memory_format=torch.contiguous_format).view(B, nW, N, C).to(dtype)
        return self.proj_drop(self.proj(x))
