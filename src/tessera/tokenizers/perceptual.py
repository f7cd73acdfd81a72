"""Perceptual distances d(x, x_hat) for tokenizer training: LPIPS, and an offline default.

LPIPS (Zhang et al. 2018, arXiv 1801.03924, "lin" v0.1): images in [-1, 1] are shifted and
scaled (the ScalingLayer), passed through VGG16 up to relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3; at each depth l the features are unit-normalised over channels, the squared
difference is weighted per channel by a non-negative 1x1 "lin" layer w_l and averaged over
space, and the five numbers are summed:

    d(x, y) = sum_l mean_{h,w} sum_c w_lc (f^l_chw(x)/||f^l_hw(x)|| - f^l_chw(y)/||f^l_hw(y)||)^2

The ImageNet VGG16 weights are in no Python package and nothing can be downloaded here, so
`LPIPS.from_files` takes a VGG16 state dict in torchvision's key layout (`features.{i}.weight`)
and the lin weights of the `lpips` wheel (`lpips/weights/v0.1/vgg.pth`, keys
`lin{l}.model.1.weight`). Neither the `lpips` package nor torchvision is imported.

`ClassifierPerceptual` is the same distance on the feature maps of any tessera encoder
(`forward_intermediates`) with unit channel weights: with a classifier trained by the
project's own recipe on the same data it works offline, and it is the default the tokenizer
configs use (stated there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "ClassifierPerceptual", "VGG16Features", "unit_normalize"]

# torchvision's vgg16().features: conv widths, "M" = 2x2 max pool
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def unit_normalize(f: Tensor, eps: float = 1e-10) -> Tensor:
    """f / ||f|| over channels at each position (LPIPS's normalize_tensor)."""
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` (same indices, so its state dict loads by key), cut after relu5_3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU()]
                ch = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, 3, H, W) -> the five LPIPS maps."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _LPIPS_TAPS:
                out.append(x)
        return out


class LPIPS(nn.Module):
    """LPIPS-VGG distance, (B, C, H, W) x 2 in [-1, 1] -> (B,); 1-channel images are repeated to RGB."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg16: str | Path, lin: str | Path) -> "LPIPS":
        """Load a torchvision-layout VGG16 state dict (`features.*`; `classifier.*` ignored) and lpips' lin file."""
        from tessera.io.checkpoint import CheckpointError, read_state_dict

        model = cls()
        vgg = {k: v for k, v in read_state_dict(vgg16).items() if k.startswith("features.")}
        expected = model.net.state_dict()
        missing = sorted(set(expected) - set(vgg))
        if missing:
            raise CheckpointError(
                f"{str(vgg16)!r} is not a torchvision VGG16 state dict: missing {missing[:4]} "
                f"(expected keys like 'features.0.weight' of shape (64, 3, 3, 3))"
            )
        for k, v in vgg.items():
            if k in expected and v.shape != expected[k].shape:
                raise CheckpointError(f"{str(vgg16)!r}: {k} has shape {tuple(v.shape)}, VGG16 needs {tuple(expected[k].shape)}")
        model.net.load_state_dict({k: vgg[k] for k in expected})
        lins = read_state_dict(lin)
        for i, conv in enumerate(model.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lins:
                raise CheckpointError(f"{str(lin)!r} has no {key!r}; expected lpips' v0.1 vgg.pth (keys lin0..lin4)")
            conv.weight.data.copy_(lins[key].view_as(conv.weight))
        return model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        d = 0.0
        for a, b, lin in zip(fx, fy, self.lins):
            d = d + lin((unit_normalize(a) - unit_normalize(b)).square()).mean(dim=(2, 3))
        return d.flatten()  # (B,)


class ClassifierPerceptual(nn.Module):
    """LPIPS's recipe on a tessera encoder's intermediate maps, unit channel weights: (B,) distances.

    Args:
        encoder: any registered encoder/classifier (frozen here); it sees its own input normalisation.
        indices: which `forward_intermediates` maps to compare (None: all).
        mean / std: the encoder's input normalisation; images arrive in [-1, 1] and are mapped
            to [0, 1], then (x - mean) / std.
    """

    def __init__(
        self, encoder: nn.Module, indices: Sequence[int] | None = None,
        mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.indices = list(indices) if indices is not None else None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ClassifierPerceptual":
        super().train(mode)
        self.encoder.eval()  # always frozen statistics (BatchNorm, dropout)
        return self

    def _features(self, x: Tensor) -> list[Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.encoder.forward_intermediates(x, indices=self.indices)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        d = 0.0
        for a, b in zip(self._features(x), self._features(y)):
            d = d + (unit_normalize(a) - unit_normalize(b)).square().sum(1).mean(dim=(1, 2))
        return d  # (B,)
