"""The core every family builds on: the model base and config helpers, the registry, the kinds' protocols."""

from tessera.core.base import TesseraModel, config_from_dict, config_to_dict, replace_config
from tessera.core.protocols import KINDS
from tessera.core.registry import (
    create_model,
    get_builder,
    list_models,
    load_families,
    model_kinds,
    register_model,
    tiny_overrides,
)

__all__ = [
    "KINDS",
    "TesseraModel",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "get_builder",
    "list_models",
    "load_families",
    "model_kinds",
    "register_model",
    "replace_config",
    "tiny_overrides",
]
