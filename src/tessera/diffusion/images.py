"""Sample grids and image files from model outputs in [-1, 1] (Pillow, no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["make_grid", "save_grid", "save_images", "to_uint8"]


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 in [0, 255] (values outside are clipped)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (B, C, H, W) images in [-1, 1] into one (rows (H+pad), nrow (W+pad), C) uint8 array."""
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    imgs = to_uint8(x)
    grid = np.zeros((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        grid[top : top + H, left : left + W] = imgs[i]
    return grid


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write (B, C, H, W) images in [-1, 1] as one PNG grid, optionally upscaled (nearest) by `scale`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _pil(make_grid(x, nrow))
    if scale > 1:
        from PIL import Image

        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def save_images(x: Tensor, folder: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each of (B, C, H, W) images in [-1, 1] as FOLDER/prefix_00000.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(x)):
        p = folder / f"{prefix}_{i:05d}.png"
        _pil(arr).save(p, format="PNG")
        paths.append(p)
    return paths
