"""Knowledge distillation from a frozen teacher (DeiT, Touvron et al., arXiv:2012.12877, section 4).

A student with a distillation token (DeiT, `distilled=True`) trains its CLS
head on the labels and its distillation head on the teacher; its prediction
is the mean of both heads. Any other student uses its one set of logits for
both terms. The objectives are `tessera.losses`' (notes, seed 003):

    hard:  L = 1/2 CE(Z_cls, y) + 1/2 CE(Z_dist, y_t),  y_t the eps-smoothed teacher argmax
    soft:  L = (1 - alpha) CE(Z_cls, y) + alpha T^2 KL(softmax(Z_t/T) || softmax(Z_dist/T))
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from tessera.losses import hard_distillation_loss, soft_distillation_loss
from tessera.train.classification import ClassificationTask


class DistillationTask(ClassificationTask):
    """ClassificationTask whose loss follows a teacher as well as the labels.

    The teacher is built with `create_model(teacher_name, checkpoint=teacher_checkpoint)`,
    kept in eval mode without gradients, and left out of this module's
    checkpoints (it is not a registered submodule).

    Args:
        teacher_name: registry name of the teacher.
        teacher_checkpoint: its weights (a run folder of `tessera fit`, or timm / HF / official files).
        teacher_args: config overrides of the teacher (e.g. img_size).
        distillation: 'hard' (DeiT's hard-label objective) or 'soft' (temperature KL).
        eps: smoothing of the teacher's hard label.
        temperature: T of soft distillation.
        alpha: weight of the soft distillation term.
        **kwargs: the student's `ClassificationTask` arguments (model_name, model_args, lr, ...).
    """

    def __init__(
        self,
        teacher_name: str,
        teacher_checkpoint: str,
        teacher_args: dict[str, Any] | None = None,
        distillation: Literal["hard", "soft"] = "hard",
        eps: float = 0.1,
        temperature: float = 3.0,
        alpha: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if distillation not in ("hard", "soft"):
            raise ValueError(f"distillation must be 'hard' or 'soft', got {distillation!r}")
        self.save_hyperparameters()
        self.teacher: nn.Module | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "teacher":  # kept off the module tree: not trained, not checkpointed
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_model(self) -> None:
        """Build the student (as ClassificationTask) and load the frozen teacher."""
        super().configure_model()
        if self.teacher is None:
            from tessera.models import create_model

            hp = self.hparams
            teacher = create_model(hp.teacher_name, checkpoint=hp.teacher_checkpoint, **(hp.teacher_args or {}))
            self.teacher = teacher.eval().requires_grad_(False)

    def on_fit_start(self) -> None:
        """Put the teacher on the student's device."""
        self.teacher.to(self.device)

    def student_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(Z_cls, Z_dist): the two heads of a distilled student, else its logits twice."""
        if getattr(self.model.config, "distilled", False):
            return self.model.forward_distill(x)
        logits = self.model(x)
        return logits, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Distillation loss on (optionally mixed) images; the teacher sees the same inputs."""
        x, y = batch
        target: Tensor = y
        if self.mixup is not None and self.mixup.enabled:
            x, target = self.mixup(x, y)
        with torch.no_grad():
            self.teacher.eval()
            z_t = self.teacher(x).float()
        z_cls, z_dist = self.student_logits(x)
        hp = self.hparams
        if hp.distillation == "hard":
            loss = hard_distillation_loss(z_cls.float(), z_dist.float(), target, z_t, eps=hp.eps)
        else:
            loss = soft_distillation_loss(z_cls.float(), z_dist.float(), target, z_t, hp.temperature, hp.alpha)
        pred = (z_cls + z_dist) / 2
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc1", (pred.argmax(-1) == y).float().mean())
        self.log("train/teacher_agree", (z_dist.argmax(-1) == z_t.argmax(-1)).float().mean())
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss
