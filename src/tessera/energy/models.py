"""Energy networks E_theta(x) -> (B,): p_theta(x) = exp(-E_theta(x)) / Z(theta) (notes 001, "Density/Energy based models").

Two small networks of the kind Du & Mordatch (2019, arXiv:1903.08689) and
Nijkamp et al. (2019, "short-run MCMC", arXiv:1904.09770) train with Langevin
negatives: an MLP for low-dimensional points and a strided conv net for
images. Smooth activations (SiLU / Swish) keep grad_x E continuous, which
Langevin dynamics follows; spectral normalisation (Miyato et al. 2018) is
optional and bounds each layer's Lipschitz constant, an aid to stable
contrastive training that Du & Mordatch use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tessera.core.base import TesseraModel, replace_config
from tessera.core.registry import register_model

__all__ = [
    "ConvEnergy",
    "ConvEnergyConfig",
    "MLPEnergy",
    "MLPEnergyConfig",
    "ebm_conv_digits",
    "ebm_mlp_2d",
]

Activation = Literal["silu", "elu", "leaky_relu", "softplus"]


def _act(name: Activation) -> nn.Module:
    return {"silu": nn.SiLU, "elu": nn.ELU, "softplus": nn.Softplus, "leaky_relu": lambda: nn.LeakyReLU(0.2)}[name]()


def _sn(layer: nn.Module, enable: bool) -> nn.Module:
    """The layer under spectral normalisation W / sigma_max(W) when enabled."""
    return nn.utils.parametrizations.spectral_norm(layer) if enable else layer


# --------------------------------------------------------------------------- MLP


@dataclass(frozen=True)
class MLPEnergyConfig:
    """An MLP energy for points x in R^in_dim.

    Attributes:
        in_dim: dimension of x.
        hidden: width of every hidden layer.
        depth: number of hidden layers.
        act: hidden activation (smooth ones give smooth Langevin drifts).
        spectral_norm: spectral normalisation on every linear layer.
    """

    in_dim: int = 2
    hidden: int = 128
    depth: int = 3
    act: Activation = "silu"
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.hidden < 1 or self.depth < 1:
            raise ValueError(
                f"in_dim, hidden and depth must be >= 1, got {self.in_dim}, {self.hidden}, {self.depth}"
            )
        if self.act not in ("silu", "elu", "leaky_relu", "softplus"):
            raise ValueError(f"act must be one of silu, elu, leaky_relu, softplus; got {self.act!r}")


class MLPEnergy(TesseraModel):
    """E(x) = w^T h_L + b, h_l = act(W_l h_{l-1} + b_l), h_0 = x: one scalar per point."""

    family = "energy"
    head_keys = ()

    def __init__(self, config: MLPEnergyConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_dim] + [c.hidden] * c.depth
        self.blocks = nn.ModuleList(
            nn.Sequential(_sn(nn.Linear(a, b), c.spectral_norm), _act(c.act)) for a, b in zip(dims[:-1], dims[1:])
        )
        self.out = _sn(nn.Linear(c.hidden, 1), c.spectral_norm)
        self.grad_checkpointing = False

    @property
    def input_size(self) -> tuple[int, ...]:  # type: ignore[override]
        """(in_dim,): one point."""
        return (self.config.in_dim,)

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """(x,): a batch of points (B, in_dim)."""
        return (torch.randn(batch_size, self.config.in_dim),)

    def energy(self, x: Tensor) -> Tensor:
        """E_theta(x): (B, in_dim) -> (B,)."""
        if x.ndim != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"expected points (B, {self.config.in_dim}), got {tuple(x.shape)}")
        h = x
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else block(h)
        return self.out(h).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """The energy, (B,)."""
        return self.energy(x)


# -------------------------------------------------------------------------- conv


@dataclass(frozen=True)
class ConvEnergyConfig:
    """A strided conv-net energy for images.

    Attributes:
        in_chans: image channels.
        img_size: image side (a multiple of 2 ** len(widths)).
        widths: channels of each stage; each stage halves the resolution.
        act: activation.
        spectral_norm: spectral normalisation on every conv and linear layer.
    """

    in_chans: int = 1
    img_size: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    act: Activation = "silu"
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        if self.img_size % (2 ** len(self.widths)):
            raise ValueError(
                f"img_size must be a multiple of 2**len(widths) = {2 ** len(self.widths)}, got {self.img_size}"
            )
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.act not in ("silu", "elu", "leaky_relu", "softplus"):
            raise ValueError(f"act must be one of silu, elu, leaky_relu, softplus; got {self.act!r}")


class ConvStage(nn.Module):
    """conv3x3 -> act -> conv4x4 stride 2 -> act: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, act: Activation, sn: bool) -> None:
        super().__init__()
        self.conv = _sn(nn.Conv2d(c_in, c_out, 3, padding=1), sn)
        self.down = _sn(nn.Conv2d(c_out, c_out, 4, stride=2, padding=1), sn)
        self.act1, self.act2 = _act(act), _act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.down(self.act1(self.conv(x))))


class ConvEnergy(TesseraModel):
    """E(x) = w^T mean_{h,w} f(x) + b, f a stack of strided conv stages."""

    family = "energy"
    head_keys = ()

    def __init__(self, config: ConvEnergyConfig) -> None:
        super().__init__(config)
        c = config
        chans = [c.in_chans] + list(c.widths)
        self.stages = nn.ModuleList(ConvStage(a, b, c.act, c.spectral_norm) for a, b in zip(chans[:-1], chans[1:]))
        self.out = _sn(nn.Linear(c.widths[-1], 1), c.spectral_norm)
        self.grad_checkpointing = False

    def energy(self, x: Tensor) -> Tensor:
        """E_theta(x): (B, C, H, W) -> (B,)."""
        C, H, W = self.input_size
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, {C}, {H}, {W}), got {tuple(x.shape)}")
        if x.shape[1] != C:
            raise ValueError(f"expected {C} channels, got {x.shape[1]} (input {tuple(x.shape)})")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image batch, got {x.dtype}")
        h = x
        for stage in self.stages:
            h = checkpoint(stage, h, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else stage(h)
        return self.out(h.mean(dim=(2, 3))).squeeze(1)  # (B, C_L, h, w) -> (B, C_L) -> (B,)

    def forward(self, x: Tensor) -> Tensor:
        """The energy, (B,)."""
        return self.energy(x)


# ---------------------------------------------------------------------- registry

_TINY_MLP = {"hidden": 16, "depth": 2}
_TINY_CONV = {"img_size": 16, "widths": (8, 16)}


@register_model("ebm_mlp_2d", kind="energy", tiny=_TINY_MLP)
def ebm_mlp_2d(**overrides) -> MLPEnergy:
    """MLP energy for 2-D toy densities: 3 hidden layers of 128, SiLU (~33k parameters)."""
    return MLPEnergy(replace_config(MLPEnergyConfig(), **overrides))


@register_model("ebm_mlp_2d_sn", kind="energy", tiny=_TINY_MLP)
def ebm_mlp_2d_sn(**overrides) -> MLPEnergy:
    """ebm_mlp_2d with spectral normalisation on every layer."""
    return MLPEnergy(replace_config(MLPEnergyConfig(spectral_norm=True), **overrides))


@register_model("ebm_conv_digits", kind="energy", tiny=_TINY_CONV)
def ebm_conv_digits(**overrides) -> ConvEnergy:
    """Conv energy for 32x32 grayscale digits: stages of 32, 64, 128 channels, SiLU (~0.4M parameters)."""
    return ConvEnergy(replace_config(ConvEnergyConfig(), **overrides))


@register_model("ebm_conv_digits_sn", kind="energy", tiny=_TINY_CONV)
def ebm_conv_digits_sn(**overrides) -> ConvEnergy:
    """ebm_conv_digits with spectral normalisation (Du & Mordatch 2019)."""
    return ConvEnergy(replace_config(ConvEnergyConfig(spectral_norm=True), **overrides))
