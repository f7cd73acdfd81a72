"""Tokenizer training (VQ-VAE, dVAE, VQ-GAN, KL autoencoder) on the multi-optimizer base.

Per batch (manual optimisation, `tessera.train.multi_optim`):

    generator:      L_G = model(x, perceptual, global_step).loss            -> optimizer "generator"
    discriminator:  L_D = hinge(D(x), D(sg[x_hat]))  (VQ-GAN, from disc_start - disc_warmup) -> optimizer "discriminator"

Logged every step: the loss terms, codebook usage (fraction of codes used within the
quantizer's window) and perplexity, the learning rates and, for the dVAE, the annealed
Gumbel temperature tau_s = tau_0 (tau_1 / tau_0)^(s / S) (DALL-E: 1 -> 1/16). A codebook whose
usage stays under `collapse_usage` for `collapse_steps` steps is reported as a warning with
the figures. Each validation epoch writes RUN/reconstructions/epochNNN.png (inputs above,
reconstructions below) and logs PSNR; the KL autoencoder's `scaling_factor` (1 / std of the
latents) is re-estimated on the first validation batch and saved with the model.

Perceptual loss (`perceptual`): "none"; "classifier" (default of the configs: features of a
tessera classifier trained by the project's own recipe on the same data, loaded from
`perceptual_checkpoint`, a run or export folder; it works offline); or "lpips" (needs
`lpips_vgg16`, a torchvision-layout VGG16 file, and `lpips_lin`, lpips' v0.1 vgg.pth).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tessera.core import create_model
from tessera.train.callbacks import EMAHost, ema_callback, run_dir
from tessera.train.multi_optim import MultiOptimizerTask, OptimizerSpec
from tessera.train.optim import param_groups

log = logging.getLogger(__name__)

__all__ = ["TokenizerTask", "load_perceptual", "psnr"]


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB of images in [-1, 1] (mapped to [0, 1]), averaged over the batch: 10 log10(1 / MSE)."""
    mse = ((x - y) / 2).float().square().flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def load_perceptual(kind: str, checkpoint: str | None, lpips_vgg16: str | None, lpips_lin: str | None) -> nn.Module | None:
    """The frozen perceptual network a config names (None for "none")."""
    from tessera.tokenizers.perceptual import LPIPS, ClassifierPerceptual

    if kind == "none":
        return None
    if kind == "lpips":
        if not (lpips_vgg16 and lpips_lin):
            raise ValueError(
                "perceptual='lpips' needs lpips_vgg16 (a torchvision-layout VGG16 state dict, e.g. vgg16-397923af.pth) "
                "and lpips_lin (lpips/weights/v0.1/vgg.pth from the lpips wheel); or use perceptual='classifier'"
            )
        return LPIPS.from_files(lpips_vgg16, lpips_lin)
    if kind == "classifier":
        from tessera.io.checkpoint import read_tessera_config

        if not checkpoint:
            raise ValueError("perceptual='classifier' needs perceptual_checkpoint: a tessera run/export folder of a classifier")
        saved = read_tessera_config(checkpoint)
        if saved is None:
            raise ValueError(f"{checkpoint!r} is not a tessera export (no config.json with an architecture)")
        net = create_model(saved["architecture"], checkpoint=checkpoint)
        pre = Path(checkpoint) / "preprocess.json"
        mean, std = (0.5,), (0.5,)
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = tuple(p["mean"]), tuple(p["std"])
        return ClassifierPerceptual(net, mean=mean, std=std)
    raise ValueError(f"perceptual must be 'none', 'classifier' or 'lpips', got {kind!r}")


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Load a trained tokenizer's weights into `model`; only a discriminator may be missing from them."""
    from tessera.io.checkpoint import load_checkpoint, read_state_dict

    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith("discriminator.")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"init_from={path!r} does not fit {type(model).__name__} (its sizes must be the model_args'): "
            f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    load_checkpoint(model, path, strict=False)  # shape mismatches are named there
    log.info("tokenizer initialised from %s (%d tensors)", path, len(state))


class TokenizerTask(EMAHost, MultiOptimizerTask):
    """Train a registered tokenizer (`tessera.list_models(kind="tokenizer")`).

    Args:
        model_name: e.g. "vqvae_f4", "vqgan_f4", "dvae_f4", "autoencoder_kl_f4".
        model_args: config overrides (channels, num_codes, ema, restart_after, disc_start, ...).
        lr: generator AdamW learning rate.
        disc_lr: discriminator learning rate (default: lr).
        betas: AdamW betas of both optimizers (taming: (0.5, 0.9)).
        weight_decay: AdamW weight decay (matrices only).
        warmup_steps: linear warm-up of both optimizers.
        min_lr_ratio: cosine decay to this fraction of the lr (1.0: constant, as taming).
        clip_grad_norm: gradient-norm clipping of both optimizers (0: off).
        ema_decay: EMA of the weights for validation and export (0: off).
        perceptual: "none", "classifier" or "lpips" (module docstring).
        perceptual_checkpoint: classifier folder for perceptual="classifier".
        lpips_vgg16 / lpips_lin: weight files for perceptual="lpips".
        tau_start / tau_end / tau_steps: dVAE temperature annealing (exponential over tau_steps).
        num_grid: images in the reconstruction grid (0: none).
        collapse_usage / collapse_steps: warn when codebook usage stays below this for that many steps.
        init_from: a trained tokenizer (run or export folder) of the same sizes to start from, e.g. a
            VQ-GAN from a VQ-VAE: taming's reconstruction phase, then the adversarial one. Every
            weight must be there except the discriminator's, which starts fresh.
    """

    monitor: tuple[str, str] = ("val/rec_loss", "min")

    def __init__(
        self,
        model_name: str = "vqvae_f4",
        model_args: dict[str, Any] | None = None,
        lr: float = 2e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 1.0,
        clip_grad_norm: float = 0.0,
        ema_decay: float = 0.0,
        perceptual: Literal["none", "classifier", "lpips"] = "none",
        perceptual_checkpoint: str | None = None,
        lpips_vgg16: str | None = None,
        lpips_lin: str | None = None,
        tau_start: float = 1.0,
        tau_end: float = 1.0 / 16,
        tau_steps: int = 5000,
        num_grid: int = 8,
        collapse_usage: float = 0.05,
        collapse_steps: int = 200,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.init_ema(ema_decay, eval_with_ema=True)
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self.perceptual = load_perceptual(perceptual, perceptual_checkpoint, lpips_vgg16, lpips_lin)
        self._low_usage_steps = 0
        self._grid_batch: Tensor | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Build the tokenizer once; in_chans and img_size come from the DataModule unless given."""
        if self.model is not None:
            return
        kw: dict[str, Any] = dict(self.hparams.model_args or {})
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        for key in ("in_chans", "img_size"):
            if key not in kw and dm is not None and getattr(dm, key, None):
                kw[key] = getattr(dm, key)
        self.model = create_model(self.hparams.model_name, **kw)
        if self.hparams.init_from:
            load_initial_weights(self.model, self.hparams.init_from)

    @property
    def has_discriminator(self) -> bool:
        from tessera.tokenizers import VQGAN

        return isinstance(self.model, VQGAN)

    def optimizer_specs(self) -> list[OptimizerSpec]:
        hp = self.hparams
        common = dict(betas=tuple(hp.betas), weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
                      min_lr_ratio=hp.min_lr_ratio, clip_grad_norm=hp.clip_grad_norm)
        specs = [OptimizerSpec("generator", hp.lr, **common)]
        if self.has_discriminator:
            specs.append(OptimizerSpec("discriminator", hp.disc_lr or hp.lr, **common))
        return specs

    def optimizer_params(self, name: str) -> list[dict[str, Any]]:
        if name == "discriminator":
            return param_groups(self.model.discriminator, self.hparams.weight_decay)
        groups = param_groups(self.model, self.hparams.weight_decay)
        disc = {id(p) for p in self.model.discriminator.parameters()} if self.has_discriminator else set()
        return [{**g, "params": [p for p in g["params"] if id(p) not in disc]} for g in groups]

    def _forward(self, x: Tensor, step: int | None) -> Any:
        if self.has_discriminator:
            return self.model(x, perceptual=self.perceptual, global_step=step)
        return self.model(x, perceptual=self.perceptual)

    def temperature(self, step: int) -> float:
        """tau_s = tau_0 (tau_1 / tau_0)^(min(s, S) / S): exponential annealing."""
        hp = self.hparams
        frac = min(step, hp.tau_steps) / max(1, hp.tau_steps)
        return hp.tau_start * (hp.tau_end / hp.tau_start) ** frac

    # --------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        step = int(self.step_count)
        from tessera.tokenizers import DVAE

        if isinstance(self.model, DVAE):
            self.model.set_temperature(self.temperature(step))
            self.log("train/temperature", self.model.quantize.temperature)
        try:
            out = self._forward(x, step)
        except FloatingPointError as err:
            raise FloatingPointError(f"step {step} (epoch {self.current_epoch}, batch {batch_idx}): {err}") from None
        self.step_optimizer("generator", out.loss)
        logs = {"train/loss": out.loss, "train/rec_loss": out.rec_loss, "train/quant_loss": out.quant_loss,
                "lr": self.current_lr("generator")}
        for key in ("perceptual_loss", "g_loss", "d_weight", "perplexity", "usage", "kl"):
            value = getattr(out, key)
            if value is not None:
                logs[f"train/{key}"] = value
        if self.has_discriminator and self.model.disc_active(step):
            d = self.model.discriminator_loss(x, out.reconstruction, global_step=step)
            self.step_optimizer("discriminator", d.loss)
            logs.update({"train/d_loss": d.loss, "train/logits_real": d.logits_real, "train/logits_fake": d.logits_fake})
        self.log_dict({k: v.detach() if isinstance(v, Tensor) else v for k, v in logs.items()}, prog_bar=False)
        self.log("train/rec", out.rec_loss.detach(), prog_bar=True, logger=False)
        if out.usage is not None:
            self._check_collapse(step, float(out.usage), float(out.perplexity))
        self.finish_step()

    def _check_collapse(self, step: int, usage: float, perplexity: float) -> None:
        hp = self.hparams
        self._low_usage_steps = self._low_usage_steps + 1 if usage < hp.collapse_usage else 0
        if self._low_usage_steps == hp.collapse_steps:
            K = self.model.config.num_codes
            log.warning(
                "codebook collapse at step %d: usage %.3f (%d of %d codes) below %.3f for %d steps, perplexity %.1f; "
                "try ema=True, kmeans_init=True, restart_after=100 (vqvae_ema_f4)",
                step, usage, round(usage * K), K, hp.collapse_usage, hp.collapse_steps, perplexity,
            )

    # ------------------------------------------------------------- validation
    def _eval(self, batch: Any, batch_idx: int, split: str) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = self._forward(x, None)
        B = x.shape[0]
        self.log(f"{split}/rec_loss", out.rec_loss, prog_bar=True, sync_dist=True, batch_size=B)
        self.log(f"{split}/psnr", psnr(out.reconstruction.clamp(-1, 1), x), prog_bar=True, sync_dist=True, batch_size=B)
        if out.perplexity is not None:
            self.log(f"{split}/perplexity", out.perplexity, sync_dist=True, batch_size=B)
            self.log(f"{split}/usage", out.usage, sync_dist=True, batch_size=B)
        if out.perceptual_loss is not None:
            self.log(f"{split}/perceptual_loss", out.perceptual_loss, sync_dist=True, batch_size=B)
        if batch_idx == 0 and split == "val":
            self._grid_batch = x[: self.hparams.num_grid].detach()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval(batch, batch_idx, "test")

    @torch.no_grad()
    def on_validation_epoch_end(self) -> None:
        """Write the reconstruction grid (inputs above, outputs below); re-estimate a KL-AE's scaling factor."""
        x, self._grid_batch = self._grid_batch, None
        if x is None or self.trainer.sanity_checking:
            return
        from tessera.tokenizers import AutoencoderKL

        if isinstance(self.model, AutoencoderKL):
            value = self.model.estimate_scaling_factor(x)
            ema = ema_callback(self.trainer)
            if ema is not None and ema.shadow is not None:
                ema.shadow["scaling_factor"].fill_(value)  # the exported (EMA) weights carry it too
            self.log("val/scaling_factor", value)
        if self.hparams.num_grid <= 0 or not self.trainer.is_global_zero:
            return
        from tessera.diffusion.images import save_grid

        rec = self._forward(x, None).reconstruction.clamp(-1, 1)
        grid = torch.cat([x, rec])
        folder = run_dir(self.trainer)
        save_grid(grid, folder / "reconstructions" / f"epoch{self.current_epoch:03d}.png", nrow=len(x), scale=2)
        save_grid(grid, folder / "reconstructions.png", nrow=len(x), scale=2)
