"""Training objectives that belong to no one model (called by the training engine)."""

from tessera.losses.distillation import hard_distillation_loss, smooth_teacher_labels, soft_distillation_loss

__all__ = ["hard_distillation_loss", "smooth_teacher_labels", "soft_distillation_loss"]
