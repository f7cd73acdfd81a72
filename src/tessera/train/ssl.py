"""Self-supervised pre-training tasks: SimMIM and DINO / DINOv2 on any registered encoder.

    tessera fit --config configs/simmim_digits.yaml
    tessera fit --config configs/dino_digits.yaml
    tessera ssl-eval runs/dino_digits                 # k-NN / linear probe of the exported encoder

Labels are never read in training. The network is a registry wrapper
(`simmim_*`, `dino_*`, `dinov2_*`, kind "wrapper"); augmentation is done here
on the batch, as tensor code, from torch's RNG, which the engine's `StepSeed`
reseeds before every step, so a run resumed after a kill draws the same crops
and masks. Everything else that changes during training (teacher weights,
centres, EMA counters) is in the wrapper's state dict and so in the checkpoint:
resume is exact.

DINO's schedules (Caron et al. 2021, appendix): the teacher momentum follows a
cosine from 0.996 to 1 over all steps, the teacher temperature warms up
linearly from 0.04 to 0.07 over `warmup_teacher_temp_epochs`, the weight decay
follows a cosine from `weight_decay` to `weight_decay_end`, and the head's last
layer gets no update in the first `freeze_last_layer_epochs` epochs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from tessera.eval.knn import knn_scores
from tessera.ssl.dino import teacher_momentum, teacher_temperature
from tessera.ssl.multicrop import MultiCrop, random_resized_crops
from tessera.train.callbacks import datamodule_of
from tessera.train.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


def _images(batch: Any) -> Tensor:
    """The images of a (images, labels) batch, or a bare image batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class _SSLTask(L.LightningModule):
    """What SimMIM and DINO training share: the wrapper from the registry and AdamW with warm-up + cosine."""

    def __init__(self) -> None:
        super().__init__()
        self.model: nn.Module | None = None


    def model_kwargs(self) -> dict[str, Any]:
        """Wrapper overrides; the encoder's in_chans / img_size default to the DataModule's.

        `encoder_args` replaces the registered default as a whole (a config field), so a
        ViT under DINO needs `dynamic_img_size: true` there for its local crops.
        """
        kw: dict[str, Any] = dict(self.hparams.model_args or {})
        enc = dict(kw.get("encoder_args") or {})
        dm = datamodule_of(self)
        for key in ("in_chans", "img_size"):
            if key not in enc and dm is not None and getattr(dm, key, None):
                enc[key] = getattr(dm, key)
        if enc:
            kw["encoder_args"] = enc
        return kw

    def configure_model(self) -> None:
        """Build the wrapper (once) from the registry."""
        if self.model is not None:
            return
        from tessera.core.registry import create_model

        self.model = create_model(self.hparams.model_name, checkpoint=self.hparams.checkpoint, **self.model_kwargs())

    def configure_optimizers(self) -> Any:
        """AdamW on the trainable parameters (no decay on 1-D / `no_weight_decay()`), warm-up + cosine per step."""
        hp = self.hparams
        opt, sched = adamw_warmup_cosine(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas),
            total_steps=self.trainer.estimated_stepping_batches,
            warmup_fraction=hp.warmup_fraction, min_lr_ratio=hp.min_lr_ratio,
        )
        for group in opt.param_groups:  # which groups follow a weight-decay schedule (DINO)
            group["decays"] = group["weight_decay"] > 0
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _log_lr(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])


class SimMIMTask(_SSLTask):
    """SimMIM pre-training: random resized crop (+ flip), a drawn block mask, masked L1.

    Args:
        model_name: a `simmim_*` wrapper.
        model_args: its config overrides (`encoder_args`, `mask_patch_size`, `mask_ratio`).
        checkpoint: initial weights of the wrapper.
        lr: peak AdamW learning rate (SimMIM: 8e-4 at batch 2048 for ViT-B).
        weight_decay: AdamW weight decay (SimMIM: 0.05).
        betas: AdamW betas (SimMIM: 0.9, 0.999).
        warmup_fraction: share of the steps warming up.
        min_lr_ratio: final LR / peak LR.
        crop_scale: area range of the random resized crop (SimMIM: 0.67-1).
        hflip: flip probability (0 for digits and text).
    """

    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        model_name: str = "simmim_vit_base_patch16_224",
        model_args: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        lr: float = 8e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        crop_scale: tuple[float, float] = (0.67, 1.0),
        hflip: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Any:
        """The wrapper's output record (loss, reconstruction, mask)."""
        return self.model(x, mask)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Crop, mask, reconstruct; logs train/loss and train/loss_vs_mean_fill."""
        x = _images(batch)
        hp = self.hparams
        x = random_resized_crops(x, x.shape[-1], tuple(hp.crop_scale), hflip=hp.hflip)
        out = self.model(x)
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/loss_vs_mean_fill", out.loss.detach() / out.mean_fill_loss.clamp_min(1e-12))
        self._log_lr()
        return out.loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        x = _images(batch)
        g = torch.Generator().manual_seed(1234)  # the same masks every validation
        mask = self.model.random_mask(x.shape[0], tuple(x.shape[-2:]), generator=g, device=x.device)
        out = self.model(x, mask)
        n = x.shape[0]
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/mean_fill_loss", out.mean_fill_loss, batch_size=n, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Masked L1 on the validation split with fixed masks, and the mean-fill baseline's."""
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """As validation, on the test split."""
        self._eval_step(batch, "test")


class DINOTask(_SSLTask):
    """DINO / DINOv2 pre-training: multi-crop, EMA teacher, centring, schedules, collapse watch.

    Args:
        model_name: a `dino_*` or `dinov2_*` wrapper.
        model_args: its config overrides (`encoder_args`, `out_dim`, `num_local_crops`, ...).
        checkpoint: initial weights of the wrapper.
        lr: peak AdamW learning rate (DINO: 5e-4 x batch / 256).
        weight_decay: AdamW weight decay at the start (DINO: 0.04) ...
        weight_decay_end: ... and at the end, along a cosine (DINO: 0.4).
        betas: AdamW betas.
        warmup_fraction: share of the steps warming the LR up (DINO: 10 of 100 epochs).
        min_lr_ratio: final LR / peak LR (DINO: 1e-6 / 5e-4).
        warmup_teacher_temp_epochs: epochs of the teacher temperature warm-up 0.04 -> 0.07.
        freeze_last_layer_epochs: epochs without updates of the head's last layer (DINO: 1).
        global_crop_scale: area range of the 2 global crops (DINO: 0.4-1; 0.32-1 in DINOv2).
        local_crop_scale: area range of the local crops (DINO: 0.05-0.4).
        hflip: flip probability of every crop (0 for digits and text).
        jitter: brightness / contrast strength of every crop (DINO's colour jitter: 0.4).
        translate: shift every crop by up to this many pixels more (0: off; the digits' test shift).
        collapse_patience: stop when the teacher stays collapsed this many steps in a row (0: never).
    """

    monitor: tuple[str, str] = ("val/knn_acc", "max")

    def __init__(
        self,
        model_name: str = "dino_vit_small_patch16_224",
        model_args: dict[str, Any] | None = None,
        checkpoint: str | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.1,
        min_lr_ratio: float = 0.002,
        warmup_teacher_temp_epochs: int = 30,
        freeze_last_layer_epochs: int = 1,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        hflip: float = 0.5,
        jitter: float = 0.4,
        translate: float = 0.0,
        collapse_patience: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._collapsed_steps = 0
        self._val_features: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    def multicrop(self, x: Tensor) -> MultiCrop:
        """The crop recipe for images like `x` (global crops at the input size)."""
        hp, c = self.hparams, self.model.config
        return MultiCrop(
            global_size=x.shape[-1], local_size=c.local_crop_size, num_local=c.num_local_crops,
            global_scale=tuple(hp.global_crop_scale), local_scale=tuple(hp.local_crop_scale),
            hflip=hp.hflip, jitter=hp.jitter, translate=hp.translate,
        )

    def teacher_temp(self) -> float:
        """tau_t at the current (fractional) epoch."""
        c = self.model.config
        steps = max(1, self.trainer.num_training_batches) if self._trainer is not None else 1
        epoch = self.trainer.global_step / steps if self._trainer is not None else 0.0
        return teacher_temperature(epoch, self.hparams.warmup_teacher_temp_epochs, c.warmup_teacher_temp, c.teacher_temp)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Multi-crop, forward, log the loss terms and collapse diagnostics."""
        x = _images(batch)
        global_views, local_views = self.multicrop(x)(x)
        out = self.model(global_views, local_views, teacher_temp=self.teacher_temp())
        self._last = out
        log_k = math.log(self.model.config.out_dim)
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/dino_loss", out.dino_loss)
        for name in ("ibot_loss", "koleo_loss"):
            value = getattr(out, name, None)
            if value is not None:
                self.log(f"train/{name}", value)
        self.log("train/teacher_entropy", out.teacher_entropy / log_k, prog_bar=True)  # share of log K
        self.log("train/teacher_batch_entropy", out.teacher_batch_entropy / log_k)
        self.log("train/kl_teacher_center", out.kl_teacher_center)
        self.log("train/teacher_temp", out.teacher_temp)
        self._set_weight_decay()
        self._log_lr()
        return out.loss

    def _set_weight_decay(self) -> None:
        hp = self.hparams
        total = max(1, self.trainer.estimated_stepping_batches)
        progress = min(1.0, self.trainer.global_step / total)
        wd = hp.weight_decay_end + (hp.weight_decay - hp.weight_decay_end) * (1 + math.cos(math.pi * progress)) / 2
        for group in self.trainer.optimizers[0].param_groups:
            if group.get("decays", False):
                group["weight_decay"] = wd
        self.log("train/weight_decay", wd)

    def on_after_backward(self) -> None:
        """No update of the head's last layer in the first epochs (DINO: it stabilises the start)."""
        if self.current_epoch < self.hparams.freeze_last_layer_epochs:
            for p in self.model.last_layer_parameters():
                p.grad = None

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimizer step, then the teacher follows the student and the centre follows the teacher.

        Done here rather than in `on_train_batch_end`, which runs after the callbacks': a
        checkpoint written at this step must already hold the updated teacher and centre.
        """
        step = self.trainer.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        total = max(1, self.trainer.estimated_stepping_batches)
        m = teacher_momentum(step, total, self.model.config.teacher_momentum)
        self.model.update_teacher(m)
        self.model.update_center(self._last)
        self.log("train/teacher_momentum", m)
        self._watch_collapse()

    def _watch_collapse(self) -> None:
        state = self.model.collapse(self._last)
        if state is None:
            self._collapsed_steps = 0
            return
        self._collapsed_steps += 1
        if self._collapsed_steps == 1:
            log.warning("DINO teacher looks collapsed (%s) at step %d", state, self.trainer.global_step)
        patience = self.hparams.collapse_patience
        if patience and self._collapsed_steps >= patience:
            raise RuntimeError(
                f"DINO collapsed ({state}: teacher entropy {float(self._last.teacher_entropy):.3f} nats of "
                f"log K = {math.log(self.model.config.out_dim):.3f}) for {patience} steps, at step "
                f"{self.trainer.global_step}"
            )

    # ------------------------------------------------------------- evaluation: k-NN on teacher features

    def _features(self, x: Tensor) -> Tensor:
        enc = self.model.teacher_encoder
        tokens = enc.forward_tokens(x)
        return tokens[:, 0] if enc.num_prefix_tokens > 0 else tokens.mean(dim=1)

    def on_validation_epoch_start(self) -> None:
        """Start collecting teacher features."""
        self._val_features, self._val_labels = [], []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Teacher features of the validation images (k-NN at the end of the epoch)."""
        x, y = batch
        self._val_features.append(self._features(x).float().cpu())
        self._val_labels.append(y.cpu())

    def on_validation_epoch_end(self) -> None:
        """Leave-one-out weighted k-NN (k = 20, T = 0.07) within the validation split: a cheap progress signal."""
        if not self._val_features:
            return
        f, y = torch.cat(self._val_features), torch.cat(self._val_labels)
        scores = knn_scores(f, y, f, k=20, T=0.07, num_classes=int(y.max()) + 1, exclude_self=True)
        acc = (scores.argmax(1) == y).float().mean()
        self.log("val/knn_acc", acc, prog_bar=True)
