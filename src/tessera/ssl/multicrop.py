"""DINO's multi-crop augmentation as batched tensor code (no torchvision).

Caron et al. 2021 (section 3.1, after SwAV): two global crops of a large area
share (0.4-1 of the image, resized to 224) and several local crops of a small
one (0.05-0.4, resized to 96), each flipped and colour-jittered independently.
Each crop is one affine resampling (`F.affine_grid` + `F.grid_sample`) of the
whole batch at once, with per-image boxes, so augmenting a batch costs a few
kernel calls. Draws come from a `torch.Generator` (or torch's global RNG,
which the training engine reseeds per step, so a resumed run repeats them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def random_resized_crops(
    x: Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    generator: torch.Generator | None = None,
    translate: float = 0.0,
) -> Tensor:
    """One random resized crop per image, resampled bilinearly to `size` x `size`.

    Args:
        x: images (B, C, H, W).
        size: output side.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        hflip: probability of mirroring each crop.
        generator: RNG for the boxes (None: the global one).
        translate: shift each box further by up to this many input pixels in x and y, past the
            image border (edge values fill in): the digits' shift robustness (0: off, no draw).

    Returns:
        (B, C, size, size).
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    B = x.shape[0]
    area = _uniform(B, *scale, generator)
    log_r = _uniform(B, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width as a fraction of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(B, generator=generator) - 1)  # centre in [-1 + w, 1 - w]
    cy = (1 - h) * (2 * torch.rand(B, generator=generator) - 1)
    flip = torch.where(torch.rand(B, generator=generator) < hflip, -1.0, 1.0)
    if translate > 0:  # pixels -> normalised coordinates (the image spans 2)
        cx = cx + translate * 2 / x.shape[-1] * (2 * torch.rand(B, generator=generator) - 1)
        cy = cy + translate * 2 / x.shape[-2] * (2 * torch.rand(B, generator=generator) - 1)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx  # output x in [-1, 1] -> input x in the box
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(x)
    grid = F.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(x: Tensor, strength: float, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Per-image brightness and contrast factors in [1 - s, 1 + s], applied with probability p.

    Works on normalised images too: contrast scales around each image's mean,
    brightness scales the image.
    """
    if strength <= 0 or p <= 0:
        return x
    B = x.shape[0]
    on = (torch.rand(B, generator=generator) < p).float()
    bright = 1 + on * _uniform(B, -strength, strength, generator)
    contrast = 1 + on * _uniform(B, -strength, strength, generator)
    bright, contrast = (t.view(B, 1, 1, 1).to(x) for t in (bright, contrast))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (x - mean) * contrast) * bright


@dataclass(frozen=True)
class MultiCrop:
    """2 global + `num_local` local crops of a batch (DINO's defaults: 224 / 96 px, 8 local).

    `translate` (input pixels) shifts every crop further, for data whose test images are shifted.

    Calling it on (B, C, H, W) gives (global (2, B, C, G, G), local (V, B, C, L, L)).
    """

    global_size: int = 224
    local_size: int = 96
    num_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    jitter: float = 0.4
    jitter_p: float = 0.8
    translate: float = 0.0

    def __post_init__(self) -> None:
        if self.global_size < 1 or self.local_size < 1 or self.num_local < 0:
            raise ValueError(
                f"need global_size, local_size >= 1 and num_local >= 0, got "
                f"{self.global_size}, {self.local_size}, {self.num_local}"
            )

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Images (B, C, H, W) -> (2, B, C, G, G) global and (V, B, C, L, L) local crops (None if V = 0)."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")

        def crop(size: int, scale: tuple[float, float]) -> Tensor:
            v = random_resized_crops(x, size, scale, self.ratio, self.hflip, generator, self.translate)
            return jitter(v, self.jitter, self.jitter_p, generator)

        globals_ = torch.stack([crop(self.global_size, self.global_scale) for _ in range(2)])
        if self.num_local == 0:
            return globals_, None
        return globals_, torch.stack([crop(self.local_size, self.local_scale) for _ in range(self.num_local)])
