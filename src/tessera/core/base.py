"""What every tessera model shares: its config, `save_pretrained`, head keys."""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def config_to_dict(config: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a config dataclass from JSON values; lists become tuples where the default is one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(fields)}")
    fixed = {k: _to_tuple(v) for k, v in values.items()}
    check_config_types(cls, fixed)
    return cls(**fixed)


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is left unchecked
        return {}


def _matches(value: Any, tp: Any) -> bool:
    """Whether `value` fits the annotation `tp` (bool is not an int, an int is a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (list, dict, set, frozenset) or isinstance(tp, type):
        return isinstance(value, origin or tp)
    return True  # an annotation this check does not know: leave it to __post_init__


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def check_config_types(cls: type, values: dict[str, Any]) -> None:
    """Raise a ValueError naming the field, the expected type and the value when one does not fit.

    Checks against the dataclass annotations (after lists became tuples): `embed_dim="96"`,
    `window_size=7.5`, `in_chans=3.0` or `qkv_bias="false"` are refused instead of failing later
    with an error that names no field, or (a non-empty string being true) being silently accepted.
    """
    hints = _field_types(cls)
    for name, value in values.items():
        tp = hints.get(name)
        if tp is not None and not _matches(value, tp):
            raise ValueError(
                f"{cls.__name__}.{name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            )
        rule = _FIELD_RANGES.get(name)
        if rule is not None and not all(rule[0](v) for v in _numbers_in(value)):
            raise ValueError(f"{cls.__name__}.{name} must be {rule[1]}, got {value!r}")


# Fields whose names mean the same thing in every family (config names are a public API), with
# the values that can work; a family adds its own checks in __post_init__.
_FIELD_RANGES: dict[str, tuple[Any, str]] = {
    **{k: (lambda v: v >= 1, ">= 1") for k in ("img_size", "patch_size", "embed_dim", "num_heads", "in_chans", "window_size")},
    "num_classes": (lambda v: v >= 0, ">= 0 (0: no classifier head)"),
    "mlp_ratio": (lambda v: v > 0, "> 0"),
    **{k: (lambda v: 0 <= v < 1, "in [0, 1)") for k in ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate")},
}


def _numbers_in(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [x for v in value for x in _numbers_in(v)]
    return [value] if isinstance(value, numbers.Real) and not isinstance(value, bool) else []


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list) else v


def replace_config(config: Any, **overrides: Any) -> Any:
    """`dataclasses.replace` that names the valid fields when one is misspelt."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{type(config).__name__} has no field(s) {unknown}; valid fields: {sorted(fields)}"
        )
    fixed = {k: _to_tuple(v) for k, v in overrides.items()}
    check_config_types(type(config), fixed)
    return dataclasses.replace(config, **fixed)


class TesseraModel(nn.Module):
    """Base of registry models: holds `config`, knows its registry name and head keys.

    Subclasses set `family` (the checkpoint converter to use) and
    `head_keys` (state-dict prefixes of the classifier, dropped when a
    checkpoint is loaded for a different number of classes).
    """

    family: ClassVar[str] = ""
    head_keys: ClassVar[tuple[str, ...]] = ("head.",)
    # State-dict keys a checkpoint may lack; they keep their initial values.
    optional_keys: ClassVar[tuple[str, ...]] = ("mask_token",)

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.arch: str = ""
        self.grad_checkpointing = False

    def save_pretrained(
        self, folder: str | Path, *, push_to_hub: bool = False, repo_id: str | None = None, **hub_kwargs: Any
    ) -> Path:
        """Write `model.safetensors` (weights, config in metadata) and `config.json`; optionally publish them.

        With `push_to_hub=True` the folder is also uploaded as Hub repository `repo_id`
        ('org/name'; `hub_kwargs`: private, token, commit_message, api), as transformers does;
        a bad repo_id or HF_HUB_OFFLINE is refused before anything is written.
        """
        from safetensors.torch import save_model

        if push_to_hub:
            from tessera.io.hub import check_repo_id

            check_repo_id(repo_id)
        elif repo_id is not None or hub_kwargs:
            raise ValueError("repo_id and Hub options need push_to_hub=True")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"architecture": self.architecture, "config": config_to_dict(self.config)}
        text = json.dumps(meta, indent=2)
        # Weights first: they carry the config in their metadata, which is what loading
        # reads, so a save that fails half-way leaves the old export or the new one.
        _atomic_write(
            folder / WEIGHTS_NAME,
            lambda p: save_model(self, str(p), metadata={"format": "pt", "tessera": text}),
        )
        _atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(text))
        if push_to_hub:
            from tessera.io.hub import upload_folder

            upload_folder(folder, repo_id, **hub_kwargs)
        return folder

    @property
    def architecture(self) -> str:
        """The registered name saved with the weights: the builder's, else one that builds this class."""
        if not self.arch:
            from tessera.core.registry import name_for_class

            self.arch = name_for_class(type(self))
        if not self.arch:
            raise ValueError(
                f"{type(self).__name__} has no registered builder; register one with "
                "tessera.register_model so that a saved folder can be loaded back by name"
            )
        return self.arch

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """Positional inputs of the right shapes for a smoke run: one (B, C, H, W) image batch."""
        return (torch.randn(batch_size, *self.input_size),)

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay besides the 1-D ones (position tables, tokens)."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (less memory); models with blocks override this."""
        self.grad_checkpointing = enable

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) the model was configured for (`config.in_chans`, `config.img_size`)."""
        h, w = (self.config.img_size,) * 2 if isinstance(self.config.img_size, int) else self.config.img_size
        return (self.config.in_chans, h, w)

    def num_params(self, exclude_head: bool = False) -> int:
        """Number of parameters, optionally without the classifier head."""
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if not (exclude_head and n.startswith(self.head_keys))
        )


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary name and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
