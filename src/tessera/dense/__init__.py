"""Dense prediction on the encoder API: DPT on plain ViTs, FPN / UPerNet on hierarchical encoders.

Importing this package registers the `dense` models (`tessera.list_models(kind="dense")`)
and the converter of transformers' DPT and UperNet checkpoints.
"""

from tessera.dense import convert, dpt, pyramid  # noqa: F401  (modules that register names / converters)
from tessera.dense.convert import from_transformers, transformers_overrides
from tessera.dense.dpt import DPT, DPTConfig
from tessera.dense.pyramid import PyramidConfig, PyramidSegmenter

__all__ = [
    "DPT",
    "DPTConfig",
    "PyramidConfig",
    "PyramidSegmenter",
    "from_transformers",
    "transformers_overrides",
]
