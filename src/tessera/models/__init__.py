"""Recognition backbones, one module per paper; importing a module registers its names."""

from tessera.core import TesseraModel, create_model, get_builder, list_models, register_model, tiny_overrides
from tessera.models import mixer, swin, vit  # noqa: F401  (this family's own modules)

__all__ = ["TesseraModel", "create_model", "get_builder", "list_models", "register_model", "tiny_overrides"]
