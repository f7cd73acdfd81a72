"""A LightningModule base for tasks with several optimizers (GAN generator + discriminator).

Lightning's automatic optimisation steps one optimizer per `training_step`; a GAN needs
two different losses, each stepping its own optimizer, so the task runs under manual
optimisation. This base does the parts every such task needs and gets wrong easily:

- one AdamW + linear warm-up / cosine schedule per optimizer (`OptimizerSpec`), stepped per batch;
- gradient clipping per optimizer, done in `on_before_optimizer_step`: Lightning calls it after
  GradScaler's `unscale_` under 16-bit mixed precision, so the norm is that of the true gradients
  (clipping the scaled gradients would clip nothing, or everything);
- `step_count`, the number of training batches done, as a saved buffer: under manual
  optimisation `trainer.global_step` counts optimizer steps (two per batch once the
  discriminator runs), so schedules such as "discriminator from step N" use `step_count`;
- every optimizer's and scheduler's state goes into Lightning's checkpoint (`optimizer_states`,
  `lr_schedulers`), so that a run killed mid-epoch resumes exactly (with tessera's
  per-batch seeding and resumable loaders, as for classification).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import lightning as L
import torch
from torch import Tensor, nn

from tessera.train.optim import warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["MultiOptimizerTask", "OptimizerSpec"]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of a multi-optimizer task.

    name: how the task refers to it (`step_optimizer(name, loss)`).
    lr, betas, weight_decay: AdamW settings (GANs: betas (0.5, 0.9), taming's).
    warmup_steps: linear warm-up from lr / warmup_steps to lr, in steps of this optimizer.
    min_lr_ratio: cosine decay to lr * min_lr_ratio by the end of the run (1.0: constant).
    clip_grad_norm: largest gradient norm (0: no clipping).
    """

    name: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    clip_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer {self.name!r}: lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optimizer {self.name!r}: min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"optimizer {self.name!r}: clip_grad_norm must be >= 0, got {self.clip_grad_norm}")


class MultiOptimizerTask(L.LightningModule):
    """Base: subclasses give `optimizer_specs()` and `optimizer_params(name)`, and call
    `step_optimizer(name, loss)` from `training_step`, then `finish_step()` once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))  # batches done; saved
        self._specs: dict[str, OptimizerSpec] = {}
        self._index: dict[str, int] = {}
        self._by_id: dict[int, OptimizerSpec] = {}
        self.last_grad_norm: dict[str, float] = {}

    # ------------------------------------------------------------------ subclasses provide
    def optimizer_specs(self) -> list[OptimizerSpec]:
        raise NotImplementedError

    def optimizer_params(self, name: str) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        """Parameters (or AdamW parameter groups) of optimizer `name`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        """One AdamW and one per-step LambdaLR (warm-up + cosine) per spec, in spec order."""
        specs = self.optimizer_specs()
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"optimizer names must be unique, got {names}")
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        optimizers, schedulers = [], []
        for i, spec in enumerate(specs):
            opt = torch.optim.AdamW(
                self.optimizer_params(spec.name), lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay
            )
            warmup = max(1, spec.warmup_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s, w=warmup, r=spec.min_lr_ratio: warmup_cosine(s, total, w, r)
            )
            self._specs[spec.name], self._index[spec.name] = spec, i
            self._by_id[id(opt)] = spec
            optimizers.append(opt)
            schedulers.append({"scheduler": sched, "interval": "step", "name": f"lr-{spec.name}"})
        return optimizers, schedulers

    def _optimizer(self, name: str) -> Any:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return opts[self._index[name]]

    def _scheduler(self, name: str) -> Any:
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        return scheds[self._index[name]]

    def step_optimizer(self, name: str, loss: Tensor) -> None:
        """zero_grad -> backward(loss) -> (unscale, clip) -> step -> scheduler step, for optimizer `name`.

        Gradients are zeroed first: the generator's loss also reaches the discriminator
        (through D(x_hat)), and those gradients must not leak into the discriminator's step.
        """
        opt = self._optimizer(name)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self._scheduler(name).step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip this optimizer's gradients (already unscaled here under 16-bit mixed precision)."""
        spec = self._by_id.get(id(optimizer))
        if spec is None:
            return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        max_norm = spec.clip_grad_norm if spec.clip_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.last_grad_norm[spec.name] = float(norm)

    def current_lr(self, name: str) -> float:
        return float(self._optimizer(name).param_groups[0]["lr"])

    def finish_step(self) -> None:
        """Count one training batch (call at the end of `training_step`)."""
        self.step_count += 1
