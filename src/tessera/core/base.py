"""What every tessera model shares: its config, `save_pretrained`, head keys."""

from __future__ import annotations

import dataclasses
import json
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
    return cls(**fixed)


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
    return dataclasses.replace(config, **{k: _to_tuple(v) for k, v in overrides.items()})


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

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `model.safetensors` (weights, config in metadata) and `config.json`."""
        from safetensors.torch import save_model

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
