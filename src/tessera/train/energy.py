"""Contrastive-divergence training of an energy model with short-run Langevin negatives and a replay buffer.

Notes 001: the log-likelihood gradient splits into a data term and a model term,
    grad_theta E_data[log p_theta] = -E_data[grad_theta E(x)] + E_{x ~ p_theta}[grad_theta E(x)],
so each step minimises (Du & Mordatch 2019, arXiv:1903.08689, sec. 3)
    L = mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)
with x+ a data batch and x- the ends of short Langevin / SGLD chains started
from a replay buffer (about 5% of starts fresh noise); the squared-energy term
keeps the energies near zero. The buffer is a buffer of this module, so it is
saved in the checkpoint and a resumed run draws the same negatives. The buffer
draw and the Langevin noise come from a generator seeded by (run seed, global
step), so a run resumed from any step repeats the uninterrupted run exactly.

Data: `Toy2DDataModule` (points; validation reports the exact grid
log-likelihood, MMD to the data, and a truth / model / samples PNG) or any
image DataModule with `normalize="signed"` or "none" (validation writes grids
of buffer samples and of chains started from noise).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from torch import Tensor, nn

import tessera
from tessera.data.loader import sample_seed
from tessera.energy.buffer import ReplayBuffer
from tessera.energy.samplers import ChainDivergedError, SGLDSampler
from tessera.train.callbacks import EMAHost, NonFiniteLossError, datamodule_of
from tessera.train.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["EnergyDivergedError", "EnergyTask"]


class EnergyDivergedError(NonFiniteLossError):
    """The energies of a training step are NaN / inf or beyond the bound; names the step."""


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without requires_grad for the duration (sampling differentiates w.r.t. x only)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


class EnergyTask(EMAHost, L.LightningModule):
    """Train a registered `energy` model by contrastive divergence with persistent SGLD negatives.

    Args:
        model: a registered energy model (`tessera.list_models(kind="energy")`).
        model_args: config overrides (in_dim / in_chans / img_size come from the data unless given).
        alpha: weight of the energy-magnitude regulariser alpha (E(x+)^2 + E(x-)^2).
        sgld_steps: Langevin steps per training step.
        sgld_step_size: step size of the gradient term.
        sgld_noise: noise std; None gives sqrt(2 step size), true Langevin (needed for a calibrated density).
        grad_clip: clamp each element of grad_x E during sampling (None: off).
        clamp_samples: keep negatives inside the data's range (the toy box or the pixel range).
        buffer_size: replay buffer capacity.
        reinit_prob: share of chain starts that are fresh uniform noise.
        energy_bound: divergence guard: stop when |E| exceeds this on a batch.
        lr: Adam learning rate.
        betas: Adam betas (Du & Mordatch and JEM use beta1 = 0 against the noisy negative term).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up of the learning rate.
        min_lr_ratio: cosine decay to this fraction of lr (1.0: constant).
        ema_decay: EMA of the weights for evaluation (0: off).
        grid_size: grid side for the exact 2-D log-likelihood.
        num_samples: images in the validation grids (images only).
        eval_sgld_steps: Langevin steps of the validation chains from noise (images only).
    """

    monitor: tuple[str, str] | None = None

    def __init__(
        self,
        model: str = "ebm_mlp_2d",
        model_args: dict[str, Any] | None = None,
        alpha: float = 0.1,
        sgld_steps: int = 20,
        sgld_step_size: float = 0.01,
        sgld_noise: float | None = None,
        grad_clip: float | None = None,
        clamp_samples: bool = True,
        buffer_size: int = 10_000,
        reinit_prob: float = 0.05,
        energy_bound: float = 1e4,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 1.0,
        ema_decay: float = 0.0,
        grid_size: int = 200,
        num_samples: int = 64,
        eval_sgld_steps: int = 100,
    ) -> None:
        super().__init__()
        self.init_ema(ema_decay, eval_with_ema=True)
        if alpha < 0 or sgld_steps < 1 or energy_bound <= 0:
            raise ValueError(f"need alpha >= 0, sgld_steps >= 1, energy_bound > 0; got {alpha}, {sgld_steps}, {energy_bound}")
        self.save_hyperparameters()
        noise = math.sqrt(2 * sgld_step_size) if sgld_noise is None else sgld_noise
        self.sgld_noise = noise
        self._sampler_args = dict(step_size=sgld_step_size, noise_scale=noise, grad_clip=grad_clip)
        SGLDSampler(**self._sampler_args)  # check the settings now, not at the first step
        self.model: nn.Module | None = None
        self.buffer: ReplayBuffer | None = None
        self.is_points = False
        self.data_range: tuple[float, float] = (-1.0, 1.0)

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build the energy network and the replay buffer (shapes and ranges from the DataModule)."""
        if self.model is not None:
            return
        hp = self.hparams
        kw: dict[str, Any] = dict(hp.model_args or {})
        dm = datamodule_of(self)
        if dm is not None and hasattr(dm, "box"):  # points (Toy2DDataModule)
            self.is_points = True
            kw.setdefault("in_dim", dm.shape[0])
            self.data_range = tuple(dm.box)
            shape: tuple[int, ...] = tuple(dm.shape)
            self.monitor = ("val/loglik", "max")
        else:
            for key in ("in_chans", "img_size"):
                if key not in kw and dm is not None and getattr(dm, key, None):
                    kw[key] = getattr(dm, key)
            norm = getattr(dm, "normalize", "signed") if dm is not None else "signed"
            if norm not in ("signed", "none"):
                raise ValueError(f"EnergyTask needs images in a fixed range: normalize='signed' or 'none', got {norm!r}")
            self.data_range = (-1.0, 1.0) if norm == "signed" else (0.0, 1.0)
            self.monitor = None
        self.model = tessera.create_model(hp.model, **kw)
        if not self.is_points:
            shape = tuple(self.model.input_size)
        self.buffer = ReplayBuffer(hp.buffer_size, shape, *self.data_range, reinit_prob=hp.reinit_prob)

    def forward(self, x: Tensor) -> Tensor:
        """E_theta(x): (B,)."""
        return self.model(x)

    def sampler(self) -> SGLDSampler:
        """The training sampler (SGLD; with the default noise it is the notes' Langevin update)."""
        clamp = self.data_range if self.hparams.clamp_samples else None
        return SGLDSampler(**self._sampler_args, clamp=clamp)

    # --------------------------------------------------------------- training
    def step_generator(self) -> torch.Generator:
        """The random source of this optimizer step: seeded by (run seed, global step, rank)."""
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return torch.Generator().manual_seed(sample_seed(base, self.global_step, -101 - self.global_rank))

    def negatives(
        self, n: int, steps: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Any]:
        """x- from short-run chains started in the buffer: (n, *shape), their slots, the chain record."""
        x0, index = self.buffer.draw(n, generator)
        with frozen(self.model):
            res = self.sampler().sample(
                self.model.energy, x0.to(self.device), steps or self.hparams.sgld_steps, generator=generator
            )
        return res.x.detach(), index, res

    def _guard(self, e_pos: Tensor, e_neg: Tensor) -> None:
        bound = self.hparams.energy_bound
        worst = float(torch.cat([e_pos, e_neg]).detach().abs().max())
        if not math.isfinite(worst) or worst > bound:
            raise EnergyDivergedError(
                f"energies diverged at step {self.global_step}: max |E| = {worst:.3g} (bound {bound:g}); "
                f"E(x+) mean {float(e_pos.detach().mean()):.3g}, E(x-) mean {float(e_neg.detach().mean()):.3g}. "
                "Lower lr or the SGLD step size, raise alpha, or turn on spectral normalisation"
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """L = mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)."""
        x_pos = batch[0] if isinstance(batch, (tuple, list)) else batch
        try:
            x_neg, index, res = self.negatives(x_pos.shape[0], generator=self.step_generator())
        except ChainDivergedError as err:
            raise EnergyDivergedError(f"negative sampling diverged at training step {self.global_step}: {err}") from None
        self.buffer.push(x_neg, index)
        e_pos, e_neg = self.model(x_pos), self.model(x_neg)
        self._guard(e_pos, e_neg)
        cd = e_pos.mean() - e_neg.mean()                                       # contrastive divergence
        reg = self.hparams.alpha * (e_pos.square().mean() + e_neg.square().mean())
        loss = cd + reg
        self.log_dict(
            {"train/loss": loss, "train/cd": cd, "train/e_pos": e_pos.mean(), "train/e_neg": e_neg.mean(),
             "train/sgld_grad": res.grad_norm.mean()},
            prog_bar=False,
        )
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW with optional warm-up and cosine decay."""
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- evaluation
    def _eval_batch(self, batch: Any, stage: str) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        e = self.model(x)
        self.log(f"{stage}/e_data", e.mean(), batch_size=x.shape[0])
        self._eval_x.append(x.detach().cpu())

    def on_validation_epoch_start(self) -> None:
        self._eval_x: list[Tensor] = []

    def on_test_epoch_start(self) -> None:
        self._eval_x = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_batch(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_batch(batch, "test")

    def _epoch_metrics(self, stage: str) -> None:
        from tessera.energy.evaluate import grid_log_likelihood, mmd2

        x = torch.cat(self._eval_x) if self._eval_x else None
        if x is None or not self.is_points:
            return
        energy = lambda p: self.model.energy(p.to(self.device)).cpu()  # noqa: E731
        loglik = grid_log_likelihood(energy, x, self.data_range, self.hparams.grid_size)
        n = min(1000, x.shape[0], self.buffer.capacity)
        mmd = mmd2(self.buffer.samples[:n].cpu(), x[:n])
        self.log_dict({f"{stage}/loglik": loglik, f"{stage}/mmd": mmd}, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        """Log-likelihood and MMD (points) and the pictures of this epoch."""
        if self.trainer.sanity_checking:
            return
        self._epoch_metrics("val")
        if self.trainer.is_global_zero:
            self.write_pictures()

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")

    def _run_dir(self) -> Path:
        from tessera.train.callbacks import run_dir

        return run_dir(self.trainer)

    def write_pictures(self) -> None:
        """Points: truth / model density / buffer samples (RUN/density.png). Images: buffer and from-noise grids."""
        folder = self._run_dir()
        if self.is_points:
            from tessera.energy.evaluate import density_grid, plot_density_panels

            dm = datamodule_of(self)
            box = self.data_range
            with torch.no_grad():
                model_d = density_grid(lambda p: -self.model.energy(p.to(self.device)).cpu(), box)
                truth = density_grid(dm.density.log_prob, box) if dm is not None else model_d
            plot_density_panels(
                [("truth", truth), ("model exp(-E)/Z", model_d), ("replay buffer", self.buffer.samples[:5000].cpu())],
                folder / "density.png", box, suptitle=f"step {self.global_step}",
            )
            return
        n = self.hparams.num_samples
        if n <= 0:
            return
        from tessera.diffusion.images import save_grid

        with torch.inference_mode(False), torch.enable_grad():
            lo, hi = self.data_range
            g = torch.Generator().manual_seed(0)
            x0 = lo + (hi - lo) * torch.rand((n, *self.buffer.shape), generator=g)
            with frozen(self.model):
                x = self.sampler().sample(self.model.energy, x0.to(self.device), self.hparams.eval_sgld_steps, generator=g).x
        to_signed = (lambda t: t) if lo < 0 else (lambda t: t * 2 - 1)
        save_grid(to_signed(x.cpu()), folder / "samples_noise.png", scale=2)
        save_grid(to_signed(self.buffer.samples[:n].cpu()), folder / "samples_buffer.png", scale=2)
