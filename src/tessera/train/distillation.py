"""Knowledge distillation (placeholder, filled in below)."""

from tessera.train.classification import ClassificationTask


class DistillationTask(ClassificationTask):
    """Train a student against a teacher (work in progress)."""
