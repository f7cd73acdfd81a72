"""Converters from foreign checkpoint layouts (timm, transformers, official) to tessera's.

Each model family registers one function
`(state_dict, model, source_config) -> state_dict` that detects the layout from
the keys and returns tessera's keys. The family does it from its own modules
(`@register_converter(family)` in a module its package imports), so a new family
edits nothing here; the helpers that converters share (q/k/v fusion,
position-grid and relative-bias-table fitting) are in
`tessera.io.convert.common`. `source_config` is the saved model config
of a tessera checkpoint (None for foreign files): what the keys cannot tell,
such as the position grid of a non-square image size. A state dict already in
tessera's layout and fitting the model must come back unchanged.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

StateDict = dict[str, Tensor]
Converter = Callable[[StateDict, nn.Module, "dict | None"], StateDict]

_CONVERTERS: dict[str, Converter] = {}


def register_converter(family: str) -> Callable[[Converter], Converter]:
    """Register the checkpoint converter of a model family (the model class's `family`)."""

    def decorator(fn: Converter) -> Converter:
        old = _CONVERTERS.get(family, fn)
        if (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):  # a reload is fine
            raise ValueError(f"a checkpoint converter for family {family!r} is registered twice")
        _CONVERTERS[family] = fn
        return fn

    return decorator


def convert_state_dict(state: StateDict, model: nn.Module, source_config: dict | None = None) -> StateDict:
    """Translate `state` to tessera's layout for `model` (unchanged if already there).

    `source_config`: the config a tessera checkpoint was saved with, if any.
    The model's family registered its converter when its package was imported
    (which building the model did); a family without one gets `state` as it is.
    """
    family = getattr(model, "family", "")
    state = strip_prefix(state, model)
    fn = _CONVERTERS.get(family)
    return fn(state, model, source_config) if fn is not None else state


def strip_prefix(state: StateDict, model: nn.Module) -> StateDict:
    """Remove wrapper prefixes ('module.', Lightning's 'model.') that the model lacks."""
    own = set(model.state_dict())
    for prefix in ("module.", "model.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state) and not any(
            k.startswith(prefix) for k in own
        ):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
