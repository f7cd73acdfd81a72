"""Image classification as a LightningModule, for any registry model.

AdamW with decoupled weight decay (none on norms, biases, position tables and
tokens), a linear warm-up then cosine decay per optimizer step, label
smoothing, optional mixup/cutmix, stochastic depth through the model's own
`drop_path_rate`, optional EMA of the weights (`tessera.train.callbacks.EMA`),
top-1 / top-5 accuracy, and a test confusion matrix.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.data.transforms import MixupCutmix
from tessera.train.callbacks import EMAHost, datamodule_of
from tessera.train.optim import adamw_warmup_cosine, param_groups, warmup_cosine  # noqa: F401  (re-exported)

def topk_correct(logits: Tensor, y: Tensor, ks: tuple[int, ...]) -> list[Tensor]:
    """Number of samples whose class is among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax)
    hit = top == y[:, None]
    return [hit[:, : min(k, kmax)].any(-1).sum() for k in ks]


class ClassificationTask(EMAHost, L.LightningModule):
    """Train and evaluate a registry classifier.

    The network is built in `configure_model`, when the data is known:
    `num_classes`, `in_chans` and `img_size` come from the DataModule unless
    given here or in `model_args`.

    Args:
        model_name: a registry name (`tessera.list_models()`).
        model_args: config overrides of the model (e.g. embed_dim, depths, drop_path_rate).
        num_classes: classifier width (default: the DataModule's).
        checkpoint: initial weights (any layout `create_model` reads); a different head is dropped.
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_fraction: share of all optimizer steps spent warming up linearly.
        min_lr_ratio: final LR as a fraction of `lr` at the end of the cosine.
        label_smoothing: epsilon of label smoothing.
        mixup_alpha: Beta(alpha, alpha) of mixup (0 = off).
        cutmix_alpha: Beta(alpha, alpha) of cutmix (0 = off).
        ema_decay: decay of an EMA of the weights, updated once per optimizer step (0 = off).
        ema_eval: evaluate (validate/test/export) with the EMA weights.
    """

    # What "best" means for this task (read by the export callback).
    monitor: tuple[str, str] = ("val/acc1", "max")

    def __init__(
        self,
        model_name: str = "swin_tiny_patch4_window7_224",
        model_args: dict[str, Any] | None = None,
        num_classes: int | None = None,
        checkpoint: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        ema_decay: float = 0.0,
        ema_eval: bool = True,
    ) -> None:
        super().__init__()
        self.init_ema(ema_decay, eval_with_ema=ema_eval)
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self.mixup: MixupCutmix | None = None
        self.test_confusion: Tensor | None = None
        self._confusion: Tensor | None = None

    # ------------------------------------------------------------------ model
    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of `create_model`: explicit ones, then what the DataModule knows."""
        hp = self.hparams
        kw: dict[str, Any] = dict(hp.model_args or {})
        dm = datamodule_of(self)
        if hp.num_classes is not None:
            kw["num_classes"] = hp.num_classes
        for key in ("num_classes", "in_chans", "img_size"):
            if key not in kw and dm is not None and getattr(dm, key, None):
                kw[key] = getattr(dm, key)
        return kw


    def configure_model(self) -> None:
        """Build the network (once) from the registry."""
        if self.model is not None:
            return
        from tessera.models import create_model

        kw = self.model_kwargs()
        self.model = create_model(self.hparams.model_name, checkpoint=self.hparams.checkpoint, **kw)
        num_classes = kw.get("num_classes", getattr(self.model.config, "num_classes", 0))
        self.mixup = MixupCutmix(
            num_classes, self.hparams.mixup_alpha, self.hparams.cutmix_alpha, smoothing=self.hparams.label_smoothing
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of images (B, C, H, W)."""
        return self.model(x)

    # --------------------------------------------------------------- training
    def loss(self, logits: Tensor, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Cross-entropy with label smoothing, or against mixed soft targets (B, K)."""
        if target is not None:
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One step: (mix), forward, loss; logs train/loss and train/acc1."""
        x, y = batch
        target = None
        if self.mixup is not None and self.mixup.enabled:
            x, target = self.mixup(x, y)  # draws from the per-step seeded RNG (StepSeed)
        logits = self(x)
        loss = self.loss(logits, x, y, target)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc1", acc, prog_bar=False)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW + per-step warm-up/cosine schedule over the whole run."""
        hp = self.hparams
        opt, sched = adamw_warmup_cosine(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
            total_steps=self.trainer.estimated_stepping_batches,
            warmup_fraction=hp.warmup_fraction, min_lr_ratio=hp.min_lr_ratio,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- evaluation
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        top1, top5 = topk_correct(logits, y, (1, 5))
        n = y.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=n)
        self.log(f"{stage}/acc1", top1.float() / n, prog_bar=True, sync_dist=True, batch_size=n)
        if logits.shape[-1] > 5:
            self.log(f"{stage}/acc5", top5.float() / n, sync_dist=True, batch_size=n)
        return logits

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and top-1/top-5 accuracy on the validation split."""
        self._eval_step(batch, "val")

    def on_test_epoch_start(self) -> None:
        """Reset the confusion matrix."""
        k = self.model_kwargs().get("num_classes") or self.model.config.num_classes
        self._confusion = torch.zeros(k, k, dtype=torch.long, device=self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss, accuracy and confusion counts (rows: true class, columns: predicted)."""
        logits = self._eval_step(batch, "test")
        k = self._confusion.shape[0]
        idx = batch[1] * k + logits.argmax(-1)
        self._confusion += torch.bincount(idx, minlength=k * k).view(k, k)

    def on_test_epoch_end(self) -> None:
        """Sum the confusion matrix over ranks."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._confusion)
        self.test_confusion = self._confusion.cpu()

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities (B, num_classes)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(-1)
