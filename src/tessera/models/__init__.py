"""Recognition backbones, one module per paper; importing a module registers its names."""

from tessera.core import TesseraModel, create_model, get_builder, list_models, register_model, tiny_overrides
from tessera.models import mixer, mvitv2, swin, swinv2, vit  # noqa: F401  (this family's own modules)
from tessera.io.convert import mixer as mixer_convert, swin as swin_convert, vit as vit_convert  # noqa: F401  (their converters)
from tessera.io.convert import mvitv2 as mvitv2_convert, swinv2 as swinv2_convert  # noqa: F401

__all__ = ["TesseraModel", "create_model", "get_builder", "list_models", "register_model", "tiny_overrides"]
