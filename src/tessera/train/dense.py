"""Dense prediction (semantic segmentation or monocular depth) as a LightningModule.

Segmentation: per-pixel cross-entropy over labelled pixels (`ignore_index`
left out), plus `aux_weight` x the auxiliary head's when the model has one
(UPerNet's FCN head, DPT's auxiliary head; 0.4 in both papers' recipes).
Depth: over pixels of known depth (target > 0), one of

    l1:     mean |d - d*|
    silog:  sqrt(mean g^2 - lambda (mean g)^2),  g = log d - log d*   (Eigen et al. 2014; lambda = 0.85)

Validation / test log mIoU and pixel accuracy, or AbsRel, RMSE, delta < 1.25
with and without least-squares scale-and-shift alignment (`tessera.eval.dense`).
The data are dict batches from `tessera.data.dense` (`image`, `mask`, `depth`).
Order, augmentations and dropout draws are seeded per position in the run, so
a run killed mid-epoch resumes to the uninterrupted run's weights, as every task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.eval.dense import DepthMeter, SegmentationMeter
from tessera.train.callbacks import EMAHost, datamodule_of, run_dir
from tessera.train.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor, lam: float = 0.85, eps: float = 1e-3) -> Tensor:
    """Scale-invariant log loss sqrt(mean g^2 - lambda (mean g)^2) over `valid` pixels (Eigen et al. 2014)."""
    g = torch.log(pred.clamp(min=eps)[valid]) - torch.log(target[valid])
    if g.numel() == 0:
        return pred.sum() * 0
    return torch.sqrt((g**2).mean() - lam * g.mean() ** 2 + 1e-12)


class DenseTask(EMAHost, L.LightningModule):
    """Train and evaluate a registry `dense` model (DPT, FPN, UPerNet, linear baseline).

    Args:
        model_name: a dense registry name (`tessera.list_models(kind="dense")`).
        model_args: its config overrides (encoder, encoder_args, channels, ...).
        num_classes: segmentation classes (default: the DataModule's).
        checkpoint: initial weights (any layout `create_model` reads).
        aux_weight: weight of the auxiliary head's loss.
        depth_loss: 'silog' or 'l1'.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        warmup_fraction: share of the steps spent warming up.
        min_lr_ratio: final LR as a fraction of `lr`.
        ema_decay: EMA of the weights (0: off).
        num_preview: test images drawn into `RUN/predictions.png` (0: none).
    """

    def __init__(
        self,
        model_name: str = "upernet_swin_tiny",
        model_args: dict[str, Any] | None = None,
        num_classes: int | None = None,
        checkpoint: str | None = None,
        aux_weight: float = 0.4,
        depth_loss: Literal["silog", "l1"] = "silog",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        ema_decay: float = 0.0,
        num_preview: int = 8,
    ) -> None:
        super().__init__()
        if depth_loss not in ("silog", "l1"):
            raise ValueError(f"depth_loss must be 'silog' or 'l1', got {depth_loss!r}")
        self.init_ema(ema_decay)
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self._meter: SegmentationMeter | DepthMeter | None = None
        self.test_scores: dict[str, Any] = {}

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build the network from the registry; segmentation width from the data unless given."""
        if self.model is not None:
            return
        from tessera.core import create_model, model_kinds

        hp = self.hparams
        if "dense" not in model_kinds(hp.model_name):
            raise ValueError(f"DenseTask trains dense models; {hp.model_name!r} is a {model_kinds(hp.model_name)[0]}")
        kw: dict[str, Any] = dict(hp.model_args or {})
        dm = datamodule_of(self)
        if hp.num_classes is not None:
            kw["num_classes"] = hp.num_classes
        self.model = create_model(hp.model_name, checkpoint=hp.checkpoint, **kw)
        if self.task == "segmentation" and "num_classes" not in kw and dm is not None and getattr(dm, "num_classes", 0):
            kw["num_classes"] = dm.num_classes
            self.model = create_model(hp.model_name, checkpoint=hp.checkpoint, **kw)
        if dm is not None:
            need = "has_mask" if self.task == "segmentation" else "has_depth"
            if not getattr(dm, need, True):
                raise ValueError(f"a {self.task} model needs {need[4:]} targets; {type(dm).__name__} has none")

    @property
    def task(self) -> str:
        return self.model.config.task if self.model is not None else "segmentation"

    @property
    def monitor(self) -> tuple[str, str]:
        """What 'best' means (read by the export callback)."""
        return ("val/miou", "max") if self.task == "segmentation" else ("val/abs_rel", "min")

    @property
    def ignore_index(self) -> int:
        dm = datamodule_of(self)
        return int(getattr(dm, "ignore_index", 255)) if dm is not None else 255

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W) or depth (B, 1, H, W)."""
        return self.model(x)

    # --------------------------------------------------------------- training
    def loss(self, out: Tensor, aux: Tensor | None, batch: dict[str, Tensor]) -> Tensor:
        """The task's loss of one batch (see the module docstring)."""
        if self.task == "segmentation":
            y = batch["mask"]
            loss = F.cross_entropy(out.float(), y, ignore_index=self.ignore_index)
            if aux is not None and self.hparams.aux_weight > 0:
                loss = loss + self.hparams.aux_weight * F.cross_entropy(aux.float(), y, ignore_index=self.ignore_index)
            return loss
        d, pred = batch["depth"], out[:, 0].float()
        valid = d > 0
        if self.hparams.depth_loss == "l1":
            return (pred - d).abs()[valid].mean() if valid.any() else pred.sum() * 0
        return silog_loss(pred, d, valid)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out, aux = self.model.forward_with_aux(batch["image"])
        loss = self.loss(out, aux, batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW + per-step warm-up/cosine schedule over the whole run."""
        hp = self.hparams
        opt, sched = adamw_warmup_cosine(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay,
            total_steps=self.trainer.estimated_stepping_batches,
            warmup_fraction=hp.warmup_fraction, min_lr_ratio=hp.min_lr_ratio,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- evaluation
    def _start(self) -> None:
        if self.task == "segmentation":
            self._meter = SegmentationMeter(self.model.config.num_classes, self.ignore_index)
        else:
            self._meter = DepthMeter()

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out, aux = self.model.forward_with_aux(batch["image"])
        n = batch["image"].shape[0]
        self.log(f"{stage}/loss", self.loss(out, aux, batch), prog_bar=stage == "val", batch_size=n, sync_dist=True)
        if self.task == "segmentation":
            self._meter.update(out.argmax(1), batch["mask"])
        else:
            self._meter.update(out[:, 0], batch["depth"])
        return out

    def _end(self, stage: str) -> dict[str, Any]:
        scores = self._meter.compute()
        keys = ("miou", "pixel_acc", "mean_acc") if self.task == "segmentation" else tuple(scores)
        for k in keys:
            self.log(f"{stage}/{k}", float(scores[k]), prog_bar=k in ("miou", "abs_rel"))
        return scores

    def on_validation_epoch_start(self) -> None:
        self._start()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_epoch_start(self) -> None:
        self._start()
        self._preview: list[tuple[Tensor, Tensor, Tensor]] = []

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self._step(batch, "test")
        room = self.hparams.num_preview - sum(len(p[0]) for p in self._preview)
        if room > 0:
            target = batch["mask"] if self.task == "segmentation" else batch["depth"]
            pred = out.argmax(1) if self.task == "segmentation" else out[:, 0]
            self._preview.append((batch["image"][:room].cpu(), target[:room].cpu(), pred[:room].float().cpu()))

    def on_test_epoch_end(self) -> None:
        self.test_scores = self._end("test")
        if self._preview and self.trainer.is_global_zero:
            images, targets, preds = (torch.cat(t) for t in zip(*self._preview))
            path = run_dir(self.trainer) / "predictions.png"
            save_prediction_grid(images, targets, preds, self.task, path, self.ignore_index)
            log.info("wrote %s", path)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class maps (B, H, W) or depth (B, H, W)."""
        x = batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (tuple, list)) else batch
        out = self(x)
        return out.argmax(1) if self.task == "segmentation" else out[:, 0]


def _palette(k: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    pal = rng.integers(40, 256, (max(k, 1), 3)).astype(np.uint8)
    pal[0] = 0
    return pal


def save_prediction_grid(
    images: Tensor, targets: Tensor, preds: Tensor, task: str, path: Path, ignore_index: int = 255
) -> None:
    """Rows of [image | target | prediction] as one PNG (classes in a fixed palette, depth in gray)."""
    from PIL import Image

    img = images.float()
    lo = img.amin(dim=(1, 2, 3), keepdim=True)
    hi = img.amax(dim=(1, 2, 3), keepdim=True)
    img = ((img - lo) / (hi - lo).clamp(min=1e-6) * 255).byte().permute(0, 2, 3, 1).numpy()
    if task == "segmentation":
        labelled = targets[targets != ignore_index]
        k = max(int(preds.max()), int(labelled.max()) if labelled.numel() else 0) + 1
        pal = _palette(k)
        t = targets.clone()
        t[t == ignore_index] = 0
        tgt, prd = pal[t.numpy()], pal[preds.long().numpy()]
    else:
        hi_d = float(targets.max()) or 1.0
        gray = lambda d: np.repeat(((1 - (d.numpy() / hi_d).clip(0, 1)) * 255).astype(np.uint8)[..., None], 3, -1)  # noqa: E731
        tgt, prd = gray(targets), gray(preds)
    rows = [np.concatenate([img[i], tgt[i], prd[i]], axis=1) for i in range(len(img))]
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 256 // grid.shape[1] * 2)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
