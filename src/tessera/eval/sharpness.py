"""How sharp reconstructions are next to their originals: the energy of the image Laplacian.

A blurry reconstruction (the notes: "VQ-VAE reconstructions are blurry") loses high spatial
frequencies; PSNR barely sees that and rewards the blur, so tokenizers are also compared on
`sharpness_ratio` = sum |Laplacian(reconstruction)|^2 / sum |Laplacian(original)|^2. It is 1 when
the reconstruction carries as much fine detail as the data, below 1 when it is smoothed, above 1
when it adds detail (noise or invented texture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["laplacian_energy", "sharpness_ratio"]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_energy(images: Tensor) -> Tensor:
    """Mean squared response of the 4-neighbour Laplacian per image, over channels and inner pixels: (B,)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < 3:
        raise ValueError(f"images must be at least 3x3 for a 3x3 Laplacian, got {tuple(images.shape[-2:])}")
    C = images.shape[1]
    kernel = _LAPLACIAN.to(images.device, torch.float32).expand(C, 1, 3, 3)
    response = F.conv2d(images.float(), kernel, groups=C)  # valid: no border from padding
    return response.square().flatten(1).mean(1)


def sharpness_ratio(reconstructions: Tensor, originals: Tensor) -> float:
    """Laplacian energy of the reconstructions over that of the originals, summed over the set (1 = as sharp)."""
    if reconstructions.shape != originals.shape:
        raise ValueError(
            f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} differ in shape"
        )
    reference = laplacian_energy(originals).sum()
    if reference <= 0:
        raise ValueError("the originals are flat (zero Laplacian energy): sharpness is undefined")
    return float(laplacian_energy(reconstructions).sum() / reference)
