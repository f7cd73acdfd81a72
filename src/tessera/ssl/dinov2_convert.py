"""Moved to `tessera.io.convert.dinov2` (converters live with the checkpoint code); kept for imports."""

from tessera.io.convert.dinov2 import (  # noqa: F401
    convert_dinov2_state,
    is_dinov2_state,
    load_dinov2_transformers,
    vit_config_from_transformers,
)
