"""Model registry: timm-style names mapped to builder functions.

`create_model` is the one entry point users call; builders take config-field
overrides and return a plain `nn.Module` subclass of `TesseraModel`.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Callable, TypeVar

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_TINY: dict[str, dict] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str, *, tiny: dict | None = None) -> Callable[[F], F]:
    """Register a builder under a timm-style model name.

    `tiny` holds config overrides giving a seconds-fast variant (32 px input,
    dim 32, depth 1-2) that the registry-wide contract tests run.
    """

    def decorator(fn: F) -> F:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[name] = fn
        _TINY[name] = dict(tiny or {})
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style pattern (e.g. 'swin_*')."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatchcase(n, pattern))


def _unknown_model_error(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_BUILDERS), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}; {len(_BUILDERS)} models are registered "
        f"(see tessera.list_models()).{hint}"
    )


def tiny_overrides(name: str) -> dict:
    """Config overrides of the tiny test variant of a registered model."""
    get_builder(name)
    return dict(_TINY[name])


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under `name`; a ValueError with close matches otherwise."""
    try:
        return _BUILDERS[name]
    except KeyError:
        raise _unknown_model_error(name) from None


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    checkpoint: str | Path | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model, optionally loading weights from `checkpoint`.

    Args:
        name: a registered name (`list_models()`), e.g. 'swin_tiny_patch4_window7_224'.
        num_classes: classifier width; 0 gives a model without head. When it
            differs from the checkpoint's, the checkpoint's head is dropped
            (fine-tuning, as in timm).
        img_size: input resolution the model is built for.
        checkpoint: a file or folder in tessera's layout (`save_pretrained`),
            timm's, Hugging Face transformers' or the official release's.
        **overrides: config fields of the model family (a misspelt one raises).
    """
    from tessera.io.checkpoint import load_checkpoint, read_tessera_config

    builder = get_builder(name)
    kwargs: dict = {}
    head_from_user = num_classes is not None
    if checkpoint is not None:
        saved = read_tessera_config(checkpoint)
        if saved is not None:
            if saved["architecture"] != name:
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} holds a {saved['architecture']!r} model, "
                    f"but {name!r} was asked for"
                )
            kwargs.update(saved["config"])
    kwargs.update(overrides)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = builder(**kwargs)
    except TypeError as err:  # dataclasses.replace on an unknown field
        raise ValueError(f"bad option for {name!r}: {err}") from None
    model.arch = name
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, drop_head=head_from_user)
    return model

