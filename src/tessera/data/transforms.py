"""Image augmentations as tensor code (no torchvision).

Per-image transforms take a (C, H, W) float tensor in [0, 1] and a
`torch.Generator`, so that a sample's augmentation is a pure function of its
seed: the data order and the augmentations of a resumed run are those of the
uninterrupted one. Batch transforms (mixup, cutmix) act on (B, C, H, W) and
one-hot targets (B, K).
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class Transform(Protocol):
    """A per-image transform: `(img (C, H, W), generator) -> img`."""

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor: ...


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        for t in self.transforms:
            img = t(img, g)
        return img

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Bilinear resize to `size` x `size` (antialiased when shrinking)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        if tuple(img.shape[-2:]) == self.size:
            return img
        shrink = img.shape[-2] > self.size[0] or img.shape[-1] > self.size[1]
        out = F.interpolate(img[None], size=self.size, mode="bilinear", align_corners=False, antialias=shrink)
        return out[0]


class RandomResizedCrop:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resize to `size`.

    The sampling follows Inception's recipe (as torchvision's): ten tries at
    a box that fits, then a central crop.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.resize = Resize(size)
        self.scale, self.ratio = scale, ratio

    def box(self, h: int, w: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of an h x w image."""
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_r))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=g))
                left = int(torch.randint(0, w - cw + 1, (), generator=g))
                return top, left, ch, cw
        side = min(h, w)  # fallback: central square crop
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        top, left, ch, cw = self.box(img.shape[-2], img.shape[-1], g)
        return self.resize(img[..., top : top + ch, left : left + cw])


class RandomTranslate:
    """Shift the image by up to `max_shift` pixels in x and y, filling with zeros (pad-and-crop, as for CIFAR)."""

    def __init__(self, max_shift: int) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        m = self.max_shift
        if m == 0:
            return img
        dy, dx = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=g))
        H, W = img.shape[-2:]
        padded = F.pad(img, (m, m, m, m))  # zeros around
        return padded[..., m + dy : m + dy + H, m + dx : m + dx + W]


class RandomHorizontalFlip:
    """Mirror left-right with probability `p` (do not use on digits or text)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        return img.flip(-1) if torch.rand((), generator=g).item() < self.p else img


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s], in random order.

    Saturation is skipped for single-channel images. Output is clamped to [0, 1].
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0) -> None:
        self.strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        order = torch.randperm(3, generator=g).tolist()
        names = list(self.strengths)
        for i in order:
            name, s = names[i], self.strengths[names[i]]
            if s <= 0:
                continue
            f = _uniform(g, max(0.0, 1 - s), 1 + s)
            if name == "brightness":
                img = img * f
            elif name == "contrast":
                img = _blend(img, _gray(img).mean(), f)
            elif img.shape[0] == 3:
                img = _blend(img, _gray(img), f)
        return img.clamp(0, 1)


def _gray(img: Tensor) -> Tensor:
    """ITU-R 601 luma (1, H, W) of an RGB or gray image."""
    if img.shape[0] == 1:
        return img
    w = img.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


def _blend(img: Tensor, other: Tensor, f: float) -> Tensor:
    return f * img + (1 - f) * other


class Normalize:
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")

    def __call__(self, img: Tensor, g: torch.Generator | None = None) -> Tensor:
        return (img - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


# ---------------------------------------------------------------------------
# batch transforms: mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019)


def one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Targets (B,) -> (B, K) with label smoothing: 1 - s + s/K on the class, s/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, device=y.device)
    return out.scatter_(1, y[:, None], 1.0 - smoothing + off)


class MixupCutmix:
    """Mix each sample i with sample B-1-i: mixup blends the images, cutmix pastes a box.

    With both enabled, each batch picks one of them with probability
    `switch_prob` for cutmix. Lambda ~ Beta(alpha, alpha); for cutmix it is
    corrected to the pasted box's true area fraction.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        smoothing: float = 0.0,
    ) -> None:
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.smoothing = switch_prob, smoothing

    @property
    def enabled(self) -> bool:
        """Whether any mixing is configured."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, x: Tensor, y: Tensor, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mix a batch. x: (B, C, H, W), y: (B,) class indices -> (x_mixed, soft targets (B, K))."""
        target = one_hot(y, self.num_classes, self.smoothing)
        if not self.enabled:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or torch.rand((), generator=g).item() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = _beta(alpha, g)
        x_flip = x.flip(0)  # partner of sample i is sample B-1-i
        if use_cutmix:
            H, W = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            ch, cw = int(H * cut), int(W * cut)
            cy, cx = int(torch.randint(0, H, (), generator=g)), int(torch.randint(0, W, (), generator=g))
            t, b = max(cy - ch // 2, 0), min(cy + ch // 2, H)
            left, r = max(cx - cw // 2, 0), min(cx + cw // 2, W)
            x = x.clone()
            x[..., t:b, left:r] = x_flip[..., t:b, left:r]
            lam = 1 - (b - t) * (r - left) / (H * W)  # the area actually kept
        else:
            x = lam * x + (1 - lam) * x_flip
        return x, lam * target + (1 - lam) * target.flip(0)


def _beta(alpha: float, g: torch.Generator | None) -> float:
    """A Beta(alpha, alpha) draw from `g`, by inverting the CDF of a uniform draw.

    torch's Gamma/Beta samplers take no generator; inverting keeps mixing a
    pure function of the generator's seed (needed for exact resume).
    """
    from scipy.special import betaincinv  # SciPy comes with scikit-learn

    p = torch.rand((), generator=g).item()
    return float(betaincinv(alpha, alpha, p))
