"""DDPM training as a LightningModule: the notes' L_simple on a UNet, EMA weights, sample grids.

    t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    L = || eps - eps_theta(x_t, t) ||^2        (or x0 / v targets, optional per-t weights)

Images come from any tessera DataModule with `normalize="signed"` (pixels in
[-1, 1], the range DDPM samples in). At the end of every validation epoch a
grid of samples (DDIM, fixed seed, EMA weights when EMA is on) is written to
`RUN/samples/epochNNN.png` and `RUN/samples.png`; `RUN/diffusion.json`
records the schedule and objective so that `tessera sample --checkpoint RUN`
rebuilds the same reverse process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from tessera.diffusion.images import save_grid
from tessera.diffusion.objectives import Prediction, diffusion_loss, min_snr_weights, sample_timesteps
from tessera.diffusion.samplers import DDIMSampler
from tessera.diffusion.schedule import NoiseSchedule
from tessera.core import create_model
from tessera.diffusion.unet import UNet
from tessera.train.callbacks import EMAHost, datamodule_of
from tessera.train.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

DIFFUSION_SPEC = "diffusion.json"


def build_schedule(kind: Literal["linear", "cosine"], T: int, beta_start: float, beta_end: float) -> NoiseSchedule:
    """The schedule named in a task's settings (`NoiseSchedule.from_name`; kept for older imports)."""
    return NoiseSchedule.from_name(kind, T, beta_start, beta_end)


class DiffusionTask(EMAHost, L.LightningModule):
    """Train a UNet denoiser with the DDPM objective.

    Args:
        unet: a registered denoiser (`tessera.list_models(kind="denoiser")`).
        unet_args: config overrides of the preset (widths, depth, attn_resolutions, dropout, ...).
        class_conditional: feed the DataModule's labels to the UNet (num_classes from the data).
        schedule: "linear" (DDPM) or "cosine" (Nichol & Dhariwal).
        T: number of diffusion steps.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        prediction: the network's target: "eps" (the notes' loss), "x0" or "v".
        loss_weighting: "none" (L_simple) or "min_snr" (Min-SNR-5 per-t weights).
        lr: peak Adam learning rate (DDPM: 2e-4).
        weight_decay: AdamW weight decay (DDPM: 0).
        warmup_steps: linear learning-rate warm-up (DDPM: 5000 on CIFAR-10).
        min_lr_ratio: cosine decay to this fraction of `lr` over the run (1.0 keeps it constant, as DDPM).
        ema_decay: decay of the EMA of the weights (DDPM: 0.9999); 0 turns it off.
        num_samples: images in the sample grid written after each validation epoch (0: none).
        sample_steps: DDIM steps for that grid.
        sample_seed: seed of the grid's noise (the same noise every epoch, so grids compare).
        sample_clip_x0: clamp the predicted x0 to [-1, 1] in the grid's sampler (off, as in the notes).
    """

    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        unet: str = "unet_digits",
        unet_args: dict[str, Any] | None = None,
        class_conditional: bool = False,
        schedule: Literal["linear", "cosine"] = "linear",
        T: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: Prediction = "eps",
        loss_weighting: Literal["none", "min_snr"] = "none",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        min_lr_ratio: float = 1.0,
        ema_decay: float = 0.999,
        num_samples: int = 64,
        sample_steps: int = 50,
        sample_seed: int = 0,
        sample_clip_x0: bool = False,
    ) -> None:
        super().__init__()
        self.init_ema(ema_decay, eval_with_ema=True)  # validation, sample grids and export use it
        if loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"loss_weighting must be 'none' or 'min_snr', got {loss_weighting!r}")
        self.save_hyperparameters()
        self.schedule = build_schedule(schedule, T, beta_start, beta_end)
        self.weights = min_snr_weights(self.schedule, 5.0, prediction) if loss_weighting == "min_snr" else None
        self.model: UNet | None = None

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build the UNet (once); in_chans and img_size come from the DataModule unless given."""
        if self.model is not None:
            return
        hp = self.hparams
        kw: dict[str, Any] = dict(hp.unet_args or {})
        dm = datamodule_of(self)
        for key in ("in_chans", "img_size"):
            if key not in kw and dm is not None and getattr(dm, key, None):
                kw[key] = getattr(dm, key)
        if hp.class_conditional and "num_classes" not in kw:
            n = getattr(dm, "num_classes", 0) if dm is not None else 0
            if not n:
                raise ValueError("class_conditional=True needs num_classes in unet_args or from the DataModule")
            kw["num_classes"] = n
        self.model = create_model(hp.unet, **kw)

    def forward(self, xt: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network output f_theta(x_t, t[, y]): (B, C, H, W)."""
        return self.model(xt, t, y if self.hparams.class_conditional else None)

    # --------------------------------------------------------------- training
    def _loss(self, batch: tuple[Tensor, Tensor], generator: torch.Generator | None = None) -> Tensor:
        x0, y = batch
        B = x0.shape[0]
        t = sample_timesteps(B, self.schedule.T, generator=generator, device=x0.device)      # t ~ U{0..T-1}
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)       # eps ~ N(0, I)
        xt = self.schedule.add_noise(x0, eps, t)                                            # x_t = sqrt(abar) x0 + sqrt(1-abar) eps
        out = self(xt, t, y)                                                                # eps_theta(x_t, t)
        return diffusion_loss(out, x0, eps, t, self.schedule, self.hparams.prediction, self.weights)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One step of L_simple (noise from the per-step seeded RNG)."""
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The same loss with t and eps fixed per batch, so that epochs compare."""
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        loss = self._loss(batch, generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch[0].shape[0])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The validation loss on the test split."""
        gen = torch.Generator().manual_seed(2000 + batch_idx)
        loss = self._loss(batch, generator=gen)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch[0].shape[0])

    def configure_optimizers(self) -> Any:
        """AdamW (DDPM: Adam, no decay) with linear warm-up, then constant or cosine."""
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, min(hp.warmup_steps, total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- sampling
    def spec(self) -> dict[str, Any]:
        """What `tessera sample` needs besides the weights: schedule, objective, conditioning."""
        hp = self.hparams
        return {
            "schedule": hp.schedule,
            "T": hp.T,
            "beta_start": hp.beta_start,
            "beta_end": hp.beta_end,
            "prediction": hp.prediction,
            "class_conditional": hp.class_conditional,
            "num_classes": self.model.config.num_classes if self.model is not None else 0,
        }

    @torch.no_grad()
    def sample(self, n: int, steps: int = 50, seed: int = 0) -> Tensor:
        """n samples (n, C, H, W) in about [-1, 1] from the current weights with DDIM(steps, eta=0)."""
        c, h, w = self.model.input_size
        sampler = DDIMSampler(
            self.schedule, steps=steps, prediction=self.hparams.prediction, clip_x0=self.hparams.sample_clip_x0
        )
        y = torch.arange(n, device=self.device) % self.model.config.num_classes if self.hparams.class_conditional else None
        was_training = self.model.training
        self.model.eval()
        try:
            return sampler.sample(
                lambda x, t: self.model(x, t, y), (n, c, h, w),
                generator=torch.Generator().manual_seed(seed), device=self.device,
            )
        finally:
            self.model.train(was_training)

    def _run_dir(self) -> Path:
        from tessera.train.callbacks import run_dir

        return run_dir(self.trainer)

    def on_fit_start(self) -> None:
        """Write RUN/diffusion.json (the reverse process of this run)."""
        if self.trainer.is_global_zero:
            folder = self._run_dir()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / DIFFUSION_SPEC).write_text(json.dumps(self.spec(), indent=2))

    def on_validation_epoch_end(self) -> None:
        """Write the sample grid of this epoch (EMA weights are swapped in during validation)."""
        n = self.hparams.num_samples
        if n <= 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        x = self.sample(n, self.hparams.sample_steps, self.hparams.sample_seed)
        folder = self._run_dir()
        save_grid(x, folder / "samples" / f"epoch{self.current_epoch:03d}.png", scale=2)
        save_grid(x, folder / "samples.png", scale=2)
        log.info("wrote %s", folder / "samples.png")
