"""Random patch masks for masked image modelling (SimMIM, iBOT).

SimMIM (Xie et al., arXiv:2111.09886, section 3.1) masks square blocks of
`mask_patch_size` pixels, coarser than the model's patch: the official
generator draws ceil(ratio * count) of the count = (H / s)(W / s) mask
patches without replacement (22 of 36 at 192 px, s = 32, ratio 0.6) and
repeats each over the (s / P)^2 model patches it covers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_mask_ratio(ratio: float, what: str = "mask_ratio") -> None:
    """A ValueError unless 0 < ratio < 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {ratio}")


def num_masked(count: int, ratio: float) -> int:
    """ceil(ratio * count), the official SimMIM count (22 of 36 at ratio 0.6)."""
    check_mask_ratio(ratio)
    # round() first so that 0.6 * 36 = 21.599999... or 21.600001 give 22 alike
    return int(math.ceil(round(count * ratio, 6)))


def block_mask(
    batch: int,
    grid: tuple[int, int],
    scale: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A SimMIM mask over the model's patch grid.

    Args:
        batch: B, one independent mask per image.
        grid: (h, w) of the model's patch grid (H / P, W / P).
        scale: mask patch / model patch (s / P): each drawn block covers scale x scale patches.
        ratio: share of mask patches masked (ceil, as the official generator).
        generator: torch RNG to draw from (None: the global one).
        device: where the mask lives.

    Returns:
        (B, h w) bool, True where a patch is masked.
    """
    h, w = grid
    if scale < 1 or h % scale or w % scale:
        raise ValueError(f"patch grid {h}x{w} is not a multiple of the mask block of {scale} patches")
    hm, wm = h // scale, w // scale
    count = hm * wm
    k = num_masked(count, ratio)
    scores = torch.rand(batch, count, generator=generator, device="cpu")
    idx = scores.argsort(dim=1)[:, :k]  # k distinct mask patches per image
    mask = torch.zeros(batch, count, dtype=torch.bool).scatter_(1, idx, True)
    mask = mask.view(batch, hm, wm).repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (B, h, w)
    return mask.reshape(batch, h * w).to(device)


def random_ratio_mask(
    batch: int,
    num_patches: int,
    ratio_range: tuple[float, float],
    probability: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """iBOT / DINOv2 masks: a share `probability` of the images get a mask of a random ratio.

    Each masked image draws its ratio uniformly from `ratio_range` (DINOv2: (0.1, 0.5),
    half of the images) and masks that many patches chosen uniformly (DINOv2 uses
    blocks; uniform patches keep the same expected count).

    Returns:
        (B, N_patches) bool.
    """
    lo, hi = ratio_range
    check_mask_ratio(lo, "mask ratio range start")
    check_mask_ratio(hi, "mask ratio range end")
    if lo > hi:
        raise ValueError(f"mask ratio range must be increasing, got {ratio_range}")
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    n_masked = int(round(batch * probability))
    for i in range(n_masked):
        r = lo + (hi - lo) * float(torch.rand((), generator=generator))
        k = max(1, int(round(r * num_patches)))
        idx = torch.randperm(num_patches, generator=generator)[:k]
        mask[i, idx] = True
    return mask.to(device)


def check_mask(mask: Tensor, batch: int, grid: tuple[int, int]) -> Tensor:
    """A (B, h w) bool mask from (B, h w) or (B, h, w); a ValueError naming shape and dtype otherwise."""
    h, w = grid
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        found = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape (B, {h * w}) or (B, {h}, {w}), got {found}")
    if tuple(mask.shape) == (batch, h, w):
        mask = mask.reshape(batch, h * w)
    if tuple(mask.shape) != (batch, h * w):
        raise ValueError(
            f"mask must have shape (B, N_patches) = ({batch}, {h * w}) or ({batch}, {h}, {w}) "
            f"for a {h}x{w} patch grid, got {tuple(mask.shape)}"
        )
    return mask
