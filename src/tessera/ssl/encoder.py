"""What every self-supervised wrapper needs from its encoder, through the encoder API only.

A wrapper (SimMIM, DINO, DINOv2) holds any registered `encoder`
(`tessera.core.protocols.KINDS["encoder"]`) built without a classifier head and,
where the method masks patches, with a learned mask token. It reads the
encoder only through `forward_tokens(x, mask)`, `feature_info`,
`num_prefix_tokens` and `patch_size`: no subscripts into its modules, no hooks.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tessera.core.registry import create_model, model_kinds

# The parts of the encoder protocol a wrapper calls.
ENCODER_API = ("forward_tokens", "forward_intermediates", "feature_info", "num_prefix_tokens", "patch_size")


def freeze_args(value: Any) -> Any:
    """Lists -> tuples, recursively (a config read back from JSON equals the one saved)."""
    if isinstance(value, dict):
        return {k: freeze_args(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(freeze_args(v) for v in value)
    return value


def check_encoder(encoder: nn.Module, name: str = "") -> nn.Module:
    """Raise a TypeError naming what is missing unless `encoder` offers the encoder API."""
    missing = [a for a in ENCODER_API if not hasattr(encoder, a)]
    if missing:
        what = name or type(encoder).__name__
        raise TypeError(
            f"{what} does not implement the encoder API: missing {missing}; a wrapper needs "
            f"{list(ENCODER_API)} (see tessera.KINDS['encoder'] and tessera.list_models(kind='encoder'))"
        )
    return encoder


def build_encoder(name: str, args: dict[str, Any], *, use_mask_token: bool) -> nn.Module:
    """`create_model(name, num_classes=0, **args)` after checking that `name` is an encoder.

    Args:
        name: a registered encoder (`tessera.list_models(kind="encoder")`).
        args: config overrides of the encoder (img_size, depth, ...).
        use_mask_token: build it with the learned mask token (SimMIM, iBOT).
    """
    kinds = model_kinds(name)  # a ValueError with close matches for an unknown name
    if "encoder" not in kinds:
        raise ValueError(
            f"{name!r} is a {'/'.join(kinds)} model, not an encoder; wrappers take one of "
            f"tessera.list_models(kind='encoder')"
        )
    extra = {"use_mask_token": True} if use_mask_token else {}
    return check_encoder(create_model(name, num_classes=0, **{**dict(args), **extra}), name)


def patch_tokens(encoder: nn.Module, tokens: Tensor) -> Tensor:
    """(B, prefix + N, C) -> (B, N, C): drop the class / distillation / register tokens."""
    return tokens[:, encoder.num_prefix_tokens :]


def pooled(encoder: nn.Module, tokens: Tensor) -> Tensor:
    """(B, prefix + N, C) -> (B, C): the class token (first prefix token), else the mean patch token."""
    if encoder.num_prefix_tokens > 0:
        return tokens[:, 0]
    return tokens.mean(dim=1)


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch tokens (B, h w, C) -> a map (B, C, h, w)."""
    B, N, C = tokens.shape
    if N != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0]}x{grid[1]} = {grid[0] * grid[1]} patch tokens, got {N}")
    return tokens.transpose(1, 2).reshape(B, C, *grid)
