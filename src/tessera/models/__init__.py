"""Recognition backbones (one module per paper) and the registry."""

from tessera.models._base import TesseraModel
from tessera.models._registry import create_model, get_builder, list_models, register_model, tiny_overrides

# Importing a family registers its names.
from tessera.models import mixer, swin, vit  # noqa: E402,F401

__all__ = ["TesseraModel", "create_model", "get_builder", "list_models", "register_model", "tiny_overrides"]
