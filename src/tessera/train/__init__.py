"""Training engine: Lightning task modules, callbacks, the `tessera fit` CLI."""

from tessera.train.classification import ClassificationTask
from tessera.train.distillation import DistillationTask

__all__ = ["ClassificationTask", "DistillationTask"]
