"""Swin's performance machinery, kept apart from `tessera.models.swin`, which reads like the notes.

`SwinFastPath.run_stage(stage, z)` computes exactly what `SwinStage.forward`
computes (the same modules, parameters and random draws; outputs agree to
float rounding, ~1e-6, and bit for bit where nothing is chunked), with three
kinds of machinery that the plain path does not have:

1. Gathers instead of copies. Cyclic shift + window partition is one token
   permutation of the padded map, and merge + reverse shift + crop is one
   gather back: one `index_select` each instead of a roll (two copies), a
   partition (one) and a crop. The indices are cached per (grid, window,
   shift, device); traced (torch.export, torch.compile) they are computed in
   the graph from the sizes, so one graph serves every image size.
2. Caches of derived tensors. The SW-MSA mask is cached per (grid, window,
   shift, device); the sum B + mask of every attention layer is cached between
   calls without autograd, keyed by everything it depends on (window, dtype,
   mask, and the table's storage and version counter, which every in-place
   update bumps: `load_state_dict`, an optimizer step, `table.mul_`), so a
   weight change is never served a stale bias. Nothing is cached with
   autograd on (the bias must be differentiable), under torch.compile (the
   values become traced constants) or for inference tensors (no version
   counter). The caches hold derived tensors only; none is in the state_dict,
   and copies / pickles of a model start with empty ones.
3. Chunking at CPU inference. With no autograd, in eval mode, on the CPU,
   each stage runs on groups of whole images of at most `chunk_tokens`
   tokens; when one image alone is larger, attention runs over groups of
   windows and the MLP half over groups of tokens of that size. Images,
   windows and (in the MLP) tokens are computed independently either way, so
   the result is the same; the smaller intermediates stay in cache instead
   of being fresh, page-faulted allocations. It is decided in one place,
   `SwinFastPath.chunk_size`, by default from the machine's last-level cache
   (`auto_chunk_tokens`). On a GPU it would
   only cut each kernel's parallelism; with autograd it saves nothing; in
   train mode DropPath draws per image, so the MLP could not be cut into
   token chunks.

The model selects this path with one flag, `SwinTransformer.set_fast_path(enable)`
(on by default); tests/test_swin.py checks that both paths agree.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tessera.hardware import cpu_info
from tessera.layers.checkpoint import checkpointed
from tessera.layers.kernel_choice import tracing
from tessera.layers.window_attention import WindowAttention, pad_to_windows, shifted_window_mask

if TYPE_CHECKING:
    from tessera.models.swin import SwinBlock, SwinStage

# Tokens per group at CPU inference: "auto" sizes the groups from this machine's last-level cache
# (`auto_chunk_tokens`); an int is a fixed count for every stage.
DEFAULT_CHUNK_TOKENS: int | str = "auto"
# Last-level-cache bytes per token of a group. Measured on the Zen 5 EPYC (32 MiB L3, Swin-T, batch 8,
# 2 threads, fp32, best of 6 in turns): 4,096-token groups 14.3 img/s, groups sized so the MLP tensor
# fills a half / a quarter of the L3 (10,922 / 5,461 tokens in stage 1, fewer in later stages) 13.3 /
# 12.2, no groups 12.0; the AVX2 EPYC's best was also 3k-6k tokens. So a count that does not shrink
# with the stage width, scaled by the cache: 32 MiB / 8 KiB = 4,096 tokens.
CACHE_BYTES_PER_TOKEN = 8 * 1024
FALLBACK_CACHE_BYTES = 32 * 1024**2  # when the OS does not say


def auto_chunk_tokens(cache_bytes: int) -> int:
    """Tokens per group for a last-level cache of `cache_bytes` (0: unknown, 32 MiB assumed); at least 256."""
    cache = cache_bytes if cache_bytes > 0 else FALLBACK_CACHE_BYTES
    return max(256, cache // CACHE_BYTES_PER_TOKEN)


# ---------------------------------------------------------------- gathers and cached derived tensors


def window_gather(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """Cyclic shift + window partition of an (already padded) (H, W) grid as one (H*W,) token index.

    Entry (window (i, j), offset (a, b)) is the source token of rolled position
    (i M_h + a, j M_w + b): row (i M_h + a + s_h) mod H, column likewise.
    Built by broadcasting aranges, with no reshape of a permuted tensor, so a
    traced graph keeps the sizes symbolic.
    """
    (H, W), (wh, ww), (sh, sw) = grid, window, shift
    i = torch.arange(H // wh)[:, None, None, None]
    j = torch.arange(W // ww)[None, :, None, None]
    a = torch.arange(wh)[None, None, :, None]
    b = torch.arange(ww)[None, None, None, :]
    rows = _wrap(i * wh + a + sh, H)  # after a roll by -s, row r holds row r + s
    cols = _wrap(j * ww + b + sw, W)
    return (rows * W + cols).reshape(-1)  # (nh, nw, M_h, M_w) -> (nW * N,)


def _wrap(v: Tensor, n) -> Tensor:
    """v mod n for v in [-n, 2n): a comparison instead of `%`, which ONNX cannot take with a symbolic n."""
    return torch.where(v >= n, v - n, torch.where(v < 0, v + n, v))


def window_order(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """`window_gather` and its inverse permutation.

    Returns `(to_windows, to_grid)`, two (H*W,) indices: for x of shape
    (B, H, W, C), `x.flatten(1, 2)[:, to_windows]` equals
    `window_partition(cyclic_shift(x, shift), window)` flattened to
    (B, nW*N, C), and `windows[:, to_grid]` undoes it.
    """
    to_windows = window_gather(grid, window, shift)
    return to_windows, torch.argsort(to_windows)


def map_order(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """Merge + reverse shift + crop as one gather: (H*W,) index into the windows of the padded, rolled grid.

    For windows (B, nW*N, C) of the (Hp, Wp) grid rolled by -shift, `windows[:, index]`
    is the (B, H*W, C) map without its padding, row-major. Token (r, c) sits at
    rolled position ((r - s_h) mod Hp, (c - s_w) mod Wp), inside window
    (row // M_h, col // M_w) at offset (row mod M_h, col mod M_w). Built from
    the sizes alone, so a traced graph keeps H, W symbolic (no crop of Hp to H).
    """
    (H, W), (Hp, Wp), (wh, ww), (sh, sw) = size, padded, window, shift
    rows = _wrap(torch.arange(H) - sh, Hp)
    cols = _wrap(torch.arange(W) - sw, Wp)
    win = (rows // wh)[:, None] * (Wp // ww) + (cols // ww)[None, :]
    offset = (rows % wh)[:, None] * ww + (cols % ww)[None, :]
    return (win * (wh * ww) + offset).reshape(-1)


@functools.lru_cache(maxsize=64)
def _cached_map_order(size, padded, window, shift, device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return map_order(size, padded, window, shift).to(device)


def cached_map_order(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> Tensor:
    """`map_order` on `device`, cached in eager mode (computed in the graph when traced: sizes may be symbolic)."""
    if torch.compiler.is_compiling():
        return map_order(size, padded, window, shift).to(device)
    return _cached_map_order(size, padded, window, shift, device)


@functools.lru_cache(maxsize=64)
def _cached_window_gather(grid, window, shift, device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # one tensor serves inference and training
        return window_gather(grid, window, shift).to(device)


@functools.lru_cache(maxsize=64)
def _cached_shift_mask(grid, window, shift, device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return shifted_window_mask(grid, window, shift).to(device)


def cached_window_gather(
    grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> Tensor:
    """`window_gather` on `device`, cached in eager mode (computed in the graph when traced)."""
    if torch.compiler.is_compiling():
        return window_gather(grid, window, shift).to(device)
    return _cached_window_gather(grid, window, shift, device)


def cached_shift_mask(
    grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> Tensor:
    """`shifted_window_mask` on `device`, cached in eager mode (a traced constant under torch.compile)."""
    if torch.compiler.is_compiling():
        return shifted_window_mask(grid, window, shift).to(device)
    return _cached_shift_mask(grid, window, shift, device)


def traced_window_and_shift(
    grid: tuple, window: tuple[int, int], shifted: bool
) -> tuple[tuple[int, int], tuple]:
    """`stage_window` for symbolic (traced) sizes of at least the window, without a branch on the size.

    Such a map keeps the window; SW-MSA shifts by half of it only when the map is
    larger than the window on both axes. `on` is that condition as a number
    (min(H, M + 1) - M is 1 above the window and 0 at it), so one graph holds
    both cases. Maps smaller than the window are outside an exported graph's
    range (`SwinTransformer.min_dynamic_size`).
    """
    (H, W), (wh, ww) = grid, window
    if not shifted:
        return window, (0, 0)
    on = (torch.sym_min(H, wh + 1) - wh) * (torch.sym_min(W, ww + 1) - ww)
    return window, ((wh // 2) * on, (ww // 2) * on)


def is_symbolic(*sizes) -> bool:
    """Whether any size is a traced symbol (torch.export / dynamic torch.compile) rather than an int."""
    return any(isinstance(v, torch.SymInt) for v in sizes)


# ---------------------------------------------------------------- the fast path


class SwinFastPath:
    """The machinery above, applied to a `SwinStage` and its blocks (see the module docstring).

    Args:
        chunk_tokens: tokens per chunk at CPU inference; "auto": from this CPU's last-level
            cache (`auto_chunk_tokens`); None: never chunk.
    """

    def __init__(self, chunk_tokens: int | str | None = DEFAULT_CHUNK_TOKENS) -> None:
        if chunk_tokens != "auto" and chunk_tokens is not None and (not isinstance(chunk_tokens, int) or chunk_tokens < 1):
            raise ValueError(f"chunk_tokens must be a positive token count, 'auto' or None, got {chunk_tokens!r}")
        self.chunk_tokens = chunk_tokens
        # attention layer -> (key, shift mask, B + mask); weak: a replaced layer takes its entry along
        self._bias: weakref.WeakKeyDictionary[WindowAttention, tuple[tuple, Tensor | None, Tensor | None]] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict:
        """Copies and pickles keep the settings, not the caches (a copy's tables are other tensors)."""
        return {"chunk_tokens": self.chunk_tokens}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def chunk_size(self, z: Tensor, training: bool) -> int | None:
        """Tokens per chunk for the map z (..., C): `chunk_tokens` at eager CPU inference in eval mode, else None.

        Compiled and exported graphs do not chunk: the compiler fuses and plans memory itself, and the cache
        query is not traceable."""
        if self.chunk_tokens is None or training or torch.is_grad_enabled() or z.device.type != "cpu" or tracing():
            return None
        if self.chunk_tokens == "auto":
            info = cpu_info()
            return auto_chunk_tokens(info.l3_bytes or info.l2_bytes)
        return self.chunk_tokens

    # -- stage and block

    def run_stage(self, stage: SwinStage, z: Tensor) -> Tensor:
        """`stage(z)`: (B, H, W, C/2) -> (B, H/2, W/2, C) (stage 1: (B, H, W, C) kept)."""
        z = stage.patch_merge(z)
        chunk = self.chunk_size(z, stage.training)
        B, H, W, _ = z.shape
        per_group = B if chunk is None else max(1, chunk // (H * W))  # whole images a group
        if per_group >= B:
            return self.run_blocks(stage, z, chunk)
        return torch.cat([self.run_blocks(stage, group, chunk) for group in z.split(per_group)])

    def run_blocks(self, stage: SwinStage, z: Tensor, chunk: int | None) -> Tensor:
        """The stage's blocks in order (recomputed in backward when grad checkpointing is on)."""
        for block in stage.blocks:
            z = checkpointed(self.block, block, z, chunk, enabled=stage.grad_checkpointing)
        return z

    def block(self, block: SwinBlock, z: Tensor, chunk: int | None) -> Tensor:
        """`block(z)` for z (B, H, W, C)."""
        z = z + block.drop_path(self.msa(block, block.norm1(z), chunk))  # ẑ = (S)W-MSA(LN(z)) + z
        if chunk is not None and z[..., 0].numel() > chunk:
            return self.mlp_residual_in_chunks(block, z, chunk)
        return z + block.drop_path(block.mlp(block.norm2(z)))  # z = MLP(LN(ẑ)) + ẑ

    @staticmethod
    def mlp_residual_in_chunks(block: SwinBlock, z: Tensor, chunk: int) -> Tensor:
        """MLP(LN(ẑ)) + ẑ over chunks of `chunk` tokens (eval mode: DropPath is the identity).

        The MLP acts on each token alone, so its 4C-wide hidden tensor needs
        only one chunk's memory.
        """
        tokens = z.reshape(-1, z.shape[-1])  # (B H W, C)
        return torch.cat([t + block.mlp(block.norm2(t)) for t in tokens.split(chunk)]).view(z.shape)

    # -- the (S)W-MSA sub-layer

    def msa(self, block: SwinBlock, x: Tensor, chunk: int | None) -> Tensor:
        """`block.msa(x)` for a normalised (B, H, W, C) map: the notes' steps as two gathers."""
        B, H, W, C = x.shape
        traced = is_symbolic(H, W)
        window, shift = traced_window_and_shift((H, W), block.window, block.shifted) if traced else block.window_and_shift((H, W))
        x = pad_to_windows(x, window)  # (B, Hp, Wp, C)
        Hp, Wp = x.shape[1], x.shape[2]
        N = window[0] * window[1]
        # traced: the shift may be 0 or M/2 in one graph; the mask of a zero shift is all zeros
        shifted = block.shifted if traced else bool(shift[0] or shift[1])
        mask = cached_shift_mask((Hp, Wp), window, shift, x.device) if shifted else None
        bias = self.window_bias(block.attn, mask, window, block.attn.matmul_dtype or x.dtype)  # B + mask
        to_windows = cached_window_gather((Hp, Wp), window, shift, x.device)
        nW = (Hp // window[0]) * (Wp // window[1])
        windows = x.flatten(1, 2).index_select(1, to_windows).view(B, nW, N, C)  # shift + partition
        windows = self.attend(block.attn, windows, bias, chunk)  # (B, nW, N, C)
        to_map = cached_map_order((H, W), (Hp, Wp), window, shift, x.device)
        return windows.flatten(1, 2).index_select(1, to_map).view(B, H, W, C)  # merge + reverse shift + crop

    @staticmethod
    def attend(attn: WindowAttention, windows: Tensor, bias: Tensor | None, chunk: int | None) -> Tensor:
        """Window attention of (B, nW, N, C), over groups of windows of at most `chunk` tokens (at least one)."""
        B, nW, N, _ = windows.shape
        if chunk is None or B * nW * N <= chunk:
            return attn.attend_windows(windows, bias)
        per = max(1, chunk // max(1, B * N))  # windows a group, across the batch
        groups = []
        for start in range(0, nW, per):
            part = bias if bias is None or bias.shape[0] == 1 else bias[start : start + per]
            groups.append(attn.attend_windows(windows[:, start : start + per], part))
        return torch.cat(groups, dim=1)

    def window_bias(
        self, attn: WindowAttention, mask: Tensor | None, window: tuple[int, int], dtype: torch.dtype
    ) -> Tensor | None:
        """`attn.window_bias(mask, window, dtype)`, cached without autograd (see the module docstring)."""
        table = None if attn.rel_pos_bias is None else attn.rel_pos_bias.table
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or (table is not None and table.is_inference()):
            return attn.window_bias(mask, window, dtype)
        key = (window, dtype, None if table is None else (table.data_ptr(), table._version, table.device))
        entry = self._bias.get(attn)
        # the mask (from `cached_shift_mask`) by identity: the entry holds it, so its id stays unique
        if entry is None or entry[0] != key or entry[1] is not mask:
            entry = (key, mask, attn.window_bias(mask, window, dtype))
            self._bias[attn] = entry
        return entry[2]
