"""Training engine: one Lightning task module per kind of training, callbacks, optim, the `tessera fit` CLI.

Tasks are imported on first use (`from tessera.train import DenseTask`), so that one task's
dependencies are not loaded for another.
"""

from __future__ import annotations

import importlib
from typing import Any

from tessera.train.classification import ClassificationTask
from tessera.train.distillation import DistillationTask

# task class -> module (its family's training)
_LAZY = {
    "CoCaTask": "coca",
    "DenseTask": "dense",
    "DiffusionTask": "diffusion",
    "DINOTask": "ssl",
    "EnergyTask": "energy",
    "LatentDiffusionTask": "latent_diffusion",
    "MultiOptimizerTask": "multi_optim",
    "SimMIMTask": "ssl",
    "TokenizerTask": "tokenizer",
    "TokenTransformerTask": "token_transformer",
}

__all__ = ["ClassificationTask", "DistillationTask", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
