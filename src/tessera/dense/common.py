"""What the dense heads share: the encoder they are built on, conv-BN-ReLU, the output heads.

A dense model is an encoder from the registry (built with
`create_model(name, num_classes=0, ...)`) plus a convolutional decoder that
reads the encoder only through its documented API:
`forward_intermediates(x, indices, norm, return_prefix_tokens)`,
`feature_info`, `num_prefix_tokens`, `patch_size`. Nothing here subscripts an
encoder's modules or hooks into them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tessera.core.base import TesseraModel
from tessera.core.registry import create_model, model_kinds
from tessera.layers import check_image_batch

Task = Literal["segmentation", "depth"]
DepthActivation = Literal["relu", "softplus"]


def normalize_args(args: Any) -> dict:
    """Encoder overrides as a plain dict with tuples for lists (so a JSON round trip compares equal)."""

    def fix(v: Any) -> Any:
        return tuple(fix(x) for x in v) if isinstance(v, (list, tuple)) else v

    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"encoder_args must be a dict of the encoder's config overrides, got {type(args).__name__}")
    return {str(k): fix(v) for k, v in sorted(args.items())}


def check_task(task: str, num_classes: int, depth_act: str) -> None:
    """Validate the (task, num_classes, depth_act) triple shared by every dense config."""
    if task not in ("segmentation", "depth"):
        raise ValueError(f"task must be 'segmentation' or 'depth', got {task!r}")
    if task == "segmentation" and num_classes < 2:
        raise ValueError(f"a segmentation head needs num_classes >= 2, got {num_classes}")
    if task == "depth" and num_classes != 1:
        raise ValueError(f"a depth head predicts one channel: num_classes must be 1, got {num_classes}")
    if depth_act not in ("relu", "softplus"):
        raise ValueError(f"depth_act must be 'relu' or 'softplus', got {depth_act!r}")


def build_encoder(name: str, args: dict, img_size: Any, in_chans: int, needs: str) -> nn.Module:
    """A registry encoder without classifier head, checked to offer the encoder API.

    Args:
        name: registry name of the encoder (`tessera.list_models(kind="encoder")`).
        args: its config overrides.
        img_size, in_chans: the dense model's, passed on to the encoder.
        needs: the head's name, for the error messages.
    """
    kinds = model_kinds(name)  # unknown names raise with close matches
    if "encoder" not in kinds:
        raise ValueError(
            f"{needs} needs an encoder (a model with forward_intermediates and feature_info); "
            f"{name!r} is a {'/'.join(kinds)} model. Pick one of tessera.list_models(kind='encoder')"
        )
    encoder = create_model(name, num_classes=0, img_size=img_size, in_chans=in_chans, **args)
    if not callable(getattr(encoder, "forward_intermediates", None)) or not getattr(encoder, "feature_info", None):
        raise ValueError(
            f"{needs} needs an encoder with forward_intermediates(x, indices, norm, return_prefix_tokens) "
            f"and feature_info; {name!r} ({type(encoder).__name__}) has no forward_intermediates"
        )
    return encoder


def resolve_indices(indices: tuple[int, ...], n: int, what: str) -> list[int]:
    """Encoder feature indices (negative from the end; empty = all) as non-negative ints."""
    idx = list(indices) if indices else list(range(n))
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise ValueError(f"{what}: feature indices {bad} out of range for an encoder with {n} feature maps")
    return [i % n for i in idx]


def maybe_checkpoint(enabled: bool, fn: Any, *args: Any) -> Any:
    """`fn(*args)`, recomputed in backward instead of stored when `enabled` and autograd is on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU: mmsegmentation's ConvModule, the brick of FPN / UPerNet."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.act(self.bn(self.conv(x)))


class NonNegative(nn.Module):
    """The non-negative output of a depth head: ReLU (DPT's) or softplus (never zero gradient)."""

    def __init__(self, kind: DepthActivation) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) if self.kind == "relu" else F.softplus(x)


def resize_to(x: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (a no-op when already there)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class DenseModel(TesseraModel):
    """Base of the dense heads: input checks, grad checkpointing, weight decay of the encoder.

    Subclasses set `self.encoder` and implement `predict(x, with_aux) -> (out, aux)`:
    `out` is (B, K, H, W) logits or (B, 1, H, W) depth at the input resolution,
    `aux` the auxiliary head's logits at the same resolution (None without one).
    """

    head_keys = ("head.", "aux_head.")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.grad_checkpointing = False

    def check_input(self, x: Tensor) -> None:
        """ValueError naming what was expected unless `x` is a (B, in_chans, H, W) float batch."""
        check_image_batch(x, self.config.in_chans)

    def predict(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
        """(main output, auxiliary logits if `with_aux` and the model has an auxiliary head, else None)."""
        raise NotImplementedError

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(main output, auxiliary logits or None), both at the input resolution (training)."""
        return self.predict(x, with_aux=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K, H, W) class logits or (B, 1, H, W) non-negative depth."""
        return self.predict(x, with_aux=False)[0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder blocks and decoder stages in backward instead of storing them."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """The encoder's exceptions (position tables, tokens), under `encoder.`."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    @property
    def task(self) -> Task:
        return self.config.task
