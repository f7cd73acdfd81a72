"""Patch partition + linear embedding, and the input checks every image model shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_amount(n: int, multiple: int) -> int:
    """How much to add to n to reach the next multiple: ceil(n / m) * m - n (= -n % m).

    Written as a ceiling so that traced symbolic sizes stay provably divisible
    (torch.export simplifies (m * k) // m to k, not (n + -n % m) // m).
    """
    return (n + multiple - 1) // multiple * multiple - n


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    """`7 -> (7, 7)`; a pair is returned as a tuple."""
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def check_image_batch(x: Tensor, in_chans: int, min_size: tuple[int, int] = (1, 1)) -> None:
    """Raise a ValueError naming expected vs found when `x` is not a (B, C, H, W) float batch."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"expected a 4-D image batch (B, {in_chans}, H, W), got a {x.ndim}-D tensor of shape "
            f"{tuple(x.shape)}" + (" (add a batch dimension with x[None])" if x.ndim == 3 else "")
        )
    if not torch.is_floating_point(x):
        raise ValueError(
            f"expected a floating-point image batch (float32, bfloat16 or float16), got {x.dtype}; "
            "convert with x.float() (and normalise) first"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
        raise ValueError(
            f"image of {x.shape[2]}x{x.shape[3]} is smaller than one patch "
            f"({min_size[0]}x{min_size[1]}); input shape {tuple(x.shape)}"
        )


class PatchEmbed(nn.Module):
    """Cut an image into P x P patches and project each to `embed_dim` channels.

    A convolution with kernel = stride = P is the notes' "flatten each patch to
    P^2 C values, then a linear map", done in one op. Output is channels-last,
    (B, H/P, W/P, C): Swin keeps the grid, ViT flattens it to (B, N, C).
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm: bool = False,
        pad: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.pad = pad  # pad H, W up to patch multiples (Swin) instead of requiring them
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, H/P, W/P, embed_dim)."""
        check_image_batch(x, self.in_chans, self.patch_size)
        ph, pw = self.patch_size
        if self.pad:
            x = F.pad(x, (0, pad_amount(x.shape[3], pw), 0, pad_amount(x.shape[2], ph)))
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, H', W', C)
        return self.norm(x)


def check_token_mask(mask: Tensor, batch: int, num_patches: int, has_mask_token: bool) -> None:
    """Raise a ValueError unless `mask` is a (B, N_patches) bool tensor and the model has a mask token."""
    if not has_mask_token:
        raise ValueError(
            "this encoder was built without a mask token: build it with use_mask_token=True to pass a mask"
        )
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, num_patches):
        raise ValueError(
            f"mask must be a bool tensor of shape (B, N_patches) = ({batch}, {num_patches}), "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )
