"""The one registry: timm-style names mapped to builders, each with a kind.

`create_model` is the entry point users call for every kind (classifier,
encoder, denoiser, tokenizer, energy, dense, wrapper; see
`tessera.core.protocols`). A family plugs in by decorating its builders with
`register_model` in its own modules; the registry finds the families by
importing every package of `tessera` that is not infrastructure, so adding a
family never means editing a list here.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import logging
import pkgutil
import typing
from pathlib import Path
from typing import Callable, TypeVar

from torch import nn

from tessera.core.protocols import KINDS

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., nn.Module])

# Packages of `tessera` that are layers of the library rather than model families:
# they register no names, and `train`, `experiments` and `cli` sit above the families.
INFRASTRUCTURE = frozenset({"core", "layers", "io", "data", "train", "cli", "eval", "losses", "experiments"})


class _Entry(typing.NamedTuple):
    builder: Callable[..., nn.Module]
    kinds: tuple[str, ...]
    tiny: dict


_ENTRIES: dict[str, _Entry] = {}
_families_loaded = False


def load_families() -> None:
    """Import every family package of tessera once, so that its names are registered."""
    global _families_loaded
    if _families_loaded:
        return
    _families_loaded = True
    import tessera

    for info in pkgutil.iter_modules(tessera.__path__):
        if info.ispkg and info.name not in INFRASTRUCTURE:
            importlib.import_module(f"tessera.{info.name}")


def register_model(
    name: str, *, kind: str | tuple[str, ...] = "classifier", tiny: dict | None = None
) -> Callable[[F], F]:
    """Register a builder under a timm-style name.

    Args:
        name: the public name (`create_model(name)`).
        kind: one kind or several (a classifier is also an `encoder`); see `tessera.core.protocols`.
        tiny: config overrides giving a seconds-fast variant (32 px input, dim 32,
            depth 1-2) that the registry-wide contract tests run.

    The builder records its name on the model it returns (`model.arch`), so a
    model built by calling the builder directly saves a folder that loads back.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown kind(s) {unknown or kinds} for {name!r}; known kinds: {sorted(KINDS)}")

    def decorator(fn: F) -> F:
        if name in _ENTRIES:
            raise ValueError(f"model name {name!r} is registered twice")

        @functools.wraps(fn)
        def build(**kwargs) -> nn.Module:
            model = fn(**kwargs)
            model.arch = name
            return model

        _ENTRIES[name] = _Entry(build, kinds, dict(tiny or {}))
        return build  # type: ignore[return-value]

    return decorator


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style pattern, optionally of one kind."""
    load_families()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {sorted(KINDS)}")
    return sorted(
        n for n, e in _ENTRIES.items() if fnmatch.fnmatchcase(n, pattern) and (kind is None or kind in e.kinds)
    )


def model_kinds(name: str) -> tuple[str, ...]:
    """The kinds a registered name was registered with (first is its main kind)."""
    return _entry(name).kinds


def tiny_overrides(name: str) -> dict:
    """Config overrides of the tiny test variant of a registered model."""
    return dict(_entry(name).tiny)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under `name`; a ValueError with close matches otherwise."""
    return _entry(name).builder


def _entry(name: str) -> _Entry:
    load_families()
    try:
        return _ENTRIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}; {len(_ENTRIES)} models are registered "
            f"(see tessera.list_models()).{hint}"
        ) from None


def builder_class(name: str) -> type | None:
    """The model class a builder is annotated to return (None when not annotated)."""
    fn = _entry(name).builder.__wrapped__
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: treat as unknown
        return None


def name_for_class(cls: type) -> str:
    """A registered name whose builder returns `cls` (for models constructed directly)."""
    load_families()
    for name in sorted(_ENTRIES):
        if builder_class(name) is cls:
            return name
    return ""


def same_architecture(saved: str, asked: str) -> bool:
    """True when two names build the same class, so a saved full config rebuilds the saved model."""
    if saved == asked:
        return True
    a, b = builder_class(saved) if saved in _ENTRIES else None, builder_class(asked)
    return a is not None and a is b


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    checkpoint: str | Path | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model of any kind, optionally loading weights from `checkpoint`.

    Args:
        name: a registered name (`list_models()`), e.g. 'swin_tiny_patch4_window7_224', or
            'hf-hub:org/name' for a repository in the Hugging Face cache (tessera, timm or
            transformers layout; `tessera.io.hub`).
        num_classes: classifier width; 0 gives a model without head. When it
            differs from the checkpoint's, the checkpoint's head is dropped
            (fine-tuning, as in timm).
        img_size: input resolution the model is built for.
        checkpoint: a file or folder in tessera's layout (`save_pretrained`),
            timm's, Hugging Face transformers' / diffusers', or the official release's.
        **overrides: config fields of the model family (a misspelt one raises).
    """
    from tessera.io.checkpoint import load_checkpoint, read_tessera_config
    from tessera.io.hub import create_model_from_hub, is_hub_name

    if is_hub_name(name):
        if checkpoint is not None:
            raise ValueError(f"{name!r} names its own weights; pass no checkpoint")
        extra = {k: v for k, v in (("num_classes", num_classes), ("img_size", img_size)) if v is not None}
        return create_model_from_hub(name, **extra, **overrides)
    builder = get_builder(name)
    kwargs: dict = {}
    head_from_user = num_classes is not None
    if checkpoint is not None:
        saved = read_tessera_config(checkpoint)
        if saved is not None:
            if not same_architecture(saved["architecture"], name):
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
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, drop_head=head_from_user)
    return model
