"""Latent diffusion training as a LightningModule: L_simple on s E(x) with condition dropout, EMA, sample grids.

    z0 = s E(x)  (frozen first stage; on the fly, or read from a cached latent file)
    t ~ U{0..T-1}, eps ~ N(0, I), z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    L = || eps - eps_theta(z_t, t, tau(y)) ||^2,  tau(y) -> null with probability p_uncond

Batches are (images, labels) or (images, tokens, labels) from any tessera image DataModule
(`DigitsDataModule`, `DigitCaptionsDataModule` with `normalize` matching the first stage),
or (latents, labels) / (latents, tokens, labels) from `LatentDataModule` over a file written
by `cache_latents` (`tessera cache-latents`). After each validation a grid (DDIM, EMA
weights, fixed seed, one row per class or prompt at `sample_guidance`) goes to
`RUN/samples/epochNNN.png` and `RUN/samples.png`. The exported run folder holds the whole
LatentDiffusion (`unet/`, `first_stage/`, `cond_encoder.safetensors`, `ldm.json`), which
`tessera sample-ldm --checkpoint RUN` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tessera.core.registry import create_model
from tessera.diffusion.conditioning import ClassEmbedder, ConditionEncoder, TextEncoder, TextEncoderConfig
from tessera.diffusion.images import save_grid
from tessera.diffusion.latent import LatentDiffusion, first_stage_latents
from tessera.diffusion.objectives import Prediction
from tessera.diffusion.schedule import NoiseSchedule
from tessera.train.callbacks import EMAHost, datamodule_of
from tessera.train.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["LatentDataModule", "LatentDiffusionTask", "cache_latents"]


def load_first_stage(name: str, checkpoint: str | None, args: dict[str, Any] | None = None) -> torch.nn.Module:
    """The frozen first stage: a registered tokenizer, with trained weights when `checkpoint` is given."""
    if checkpoint is None:
        log.warning("first stage %s has random weights (no first_stage_checkpoint): fine for tests only", name)
        return create_model(name, **(args or {}))
    return create_model(name, checkpoint=checkpoint, **(args or {}))


@torch.no_grad()
def cache_latents(first_stage: torch.nn.Module, datamodule: L.LightningDataModule, path: str | Path, batch_size: int = 256) -> Path:
    """Encode every split of `datamodule` once (no augmentation) into a safetensors file.

    Keys: `{split}_latents` (N, D, h, w) unscaled first-stage latents, `{split}_labels` (N,),
    `{split}_codes` (N, h, w) when the first stage is discrete (token transformers read them),
    and `{split}_tokens` (N, L) when the batches carry captions; split in train / val / test.
    """
    from safetensors.torch import save_file

    datamodule.setup("fit")
    first_stage.eval()
    out: dict[str, Tensor] = {}
    for split in ("train", "val", "test"):
        ds = getattr(datamodule, f"{split}_set")
        if split == "train":  # the eval transform: no augmentation in a cache
            ds.transform = datamodule.eval_transform()
        parts: dict[str, list[Tensor]] = {"latents": [], "codes": [], "tokens": [], "labels": []}
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
            enc = first_stage.encode(batch[0])
            parts["latents"].append(first_stage_latents(enc))
            if getattr(enc, "codes", None) is not None:
                parts["codes"].append(enc.codes)
            parts["labels"].append(batch[-1])
            if len(batch) == 3:
                parts["tokens"].append(batch[1])
        for k, v in parts.items():
            if v:
                out[f"{split}_{k}"] = torch.cat(v).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return path


class LatentDataModule(L.LightningDataModule):
    """Batches (latents, labels) or (latents, tokens, labels) from a `cache_latents` file.

    Args:
        path: the safetensors file.
        batch_size: per step.
        seed: shuffling seed of the training split.
        num_classes: labels in the file (default: max + 1).
        key: "latents" (latent diffusion) or "codes" (a discrete first stage's code grids, for
            `TokenTransformerTask(inputs="codes")`).
    """

    def __init__(
        self, path: str, batch_size: int = 64, seed: int = 0, num_classes: int | None = None,
        key: Literal["latents", "codes"] = "latents",
    ) -> None:
        super().__init__()
        if key not in ("latents", "codes"):
            raise ValueError(f"key must be 'latents' or 'codes', got {key!r}")
        self.path, self.batch_size, self.seed, self.key = path, batch_size, seed, key
        self._num_classes = num_classes
        self.sets: dict[str, TensorDataset] = {}
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        from safetensors.torch import load_file

        if self.sets:
            return
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"latent cache {self.path!r} not found; write it with `tessera cache-latents`")
        data = load_file(self.path)
        if f"train_{self.key}" not in data:
            raise ValueError(f"{self.path!r} holds no {self.key} (keys: {sorted(data)}); codes are cached for discrete first stages only")
        for split in ("train", "val", "test"):
            keys = [f"{split}_{self.key}"] + ([f"{split}_tokens"] if f"{split}_tokens" in data else []) + [f"{split}_labels"]
            self.sets[split] = TensorDataset(*(data[k] for k in keys))
        self.in_chans = data["train_latents"].shape[1]
        self.num_classes = self._num_classes or int(data["train_labels"].max()) + 1

    def train_dataloader(self) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.sets["train"], self.batch_size, shuffle=True, generator=g, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.sets["val"], self.batch_size)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.sets["test"], self.batch_size)


class LatentDiffusionTask(EMAHost, L.LightningModule):
    """Train a conditional UNet in a frozen tokenizer's latent space, with classifier-free guidance.

    Args:
        first_stage: a registered tokenizer (`tessera.list_models(kind="tokenizer")`).
        first_stage_checkpoint: its trained weights (folder or file); None: random (tests only).
        first_stage_args: config overrides of the first stage (must match the checkpoint).
        unet: a conditional UNet preset (`ldm_unet_*`); in_chans comes from the first stage.
        unet_args: its config overrides (widths, heads, context_dim, ...).
        conditioning: "class" (labels, M = 1) or "text" (captions through a small transformer).
        text_encoder_args: depth / heads / mlp_ratio of the text encoder (text conditioning).
        inputs: "images" (encode on the fly) or "latents" (batches from `LatentDataModule`).
        p_uncond: condition dropout for classifier-free guidance (0.1).
        scale_factor: s; None estimates 1 / std(latents) from the first 256 training inputs.
        schedule, T, beta_start, beta_end, prediction: the forward process and target (LDM: linear
            beta 0.00085 -> 0.012 over T = 1000, eps).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with warm-up and cosine decay.
        ema_decay: EMA of the weights (0: off); validation, grids and export use it.
        num_samples_per_class: grid columns (0: no grid); sample_steps: DDIM steps;
        sample_guidance: s of the grid; sample_seed: its noise seed.
    """

    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        first_stage: str = "autoencoder_kl_f4",
        first_stage_checkpoint: str | None = None,
        first_stage_args: dict[str, Any] | None = None,
        unet: str = "ldm_unet_digits",
        unet_args: dict[str, Any] | None = None,
        conditioning: Literal["class", "text"] = "class",
        text_encoder_args: dict[str, Any] | None = None,
        inputs: Literal["images", "latents"] = "images",
        p_uncond: float = 0.1,
        scale_factor: float | None = None,
        schedule: Literal["linear", "cosine"] = "linear",
        T: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction: Prediction = "eps",
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.999,
        num_samples_per_class: int = 8,
        sample_steps: int = 50,
        sample_guidance: float = 3.0,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        self.init_ema(ema_decay, eval_with_ema=True)
        if conditioning not in ("class", "text") or inputs not in ("images", "latents"):
            raise ValueError(f"conditioning must be 'class' or 'text' and inputs 'images' or 'latents', got {conditioning!r}, {inputs!r}")
        self.save_hyperparameters()
        self.schedule = NoiseSchedule.from_name(schedule, T, beta_start, beta_end)
        self.model: LatentDiffusion | None = None
        self.prompts: list[str] = []

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build first stage, UNet and condition encoder (once); sizes come from the first stage and the data."""
        if self.model is not None:
            return
        hp = self.hparams
        dm = datamodule_of(self)
        fs_args = dict(hp.first_stage_args or {})
        for key in ("img_size", "in_chans"):  # the data's, unless given
            if key not in fs_args and getattr(dm, key, None) and not isinstance(dm, LatentDataModule):
                fs_args[key] = getattr(dm, key)
        first = load_first_stage(hp.first_stage, hp.first_stage_checkpoint, fs_args)
        with torch.no_grad():
            z = first_stage_latents(first.encode(torch.zeros(1, *first.input_size)))
        kw = {"in_chans": z.shape[1], "img_size": z.shape[-1], **(hp.unet_args or {})}
        unet = create_model(hp.unet, **kw)
        d = unet.config.context_dim
        if hp.conditioning == "class":
            n = getattr(dm, "num_classes", 0) if dm is not None else 0
            if not n:
                raise ValueError("class conditioning needs a DataModule with num_classes")
            enc: ConditionEncoder = ClassEmbedder(n, d)
        else:
            tok = getattr(dm, "tokenizer", None)
            if dm is not None and tok is None:
                dm.setup("fit")
                tok = dm.tokenizer
            if tok is None:
                raise ValueError("text conditioning needs a caption DataModule (with a tokenizer)")
            self.prompts = list(getattr(dm, "class_prompts", []))
            enc = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, context_len=dm.context_length, dim=d, **(hp.text_encoder_args or {})))
        self.model = LatentDiffusion(first, unet, enc, self.schedule, hp.scale_factor, hp.p_uncond, hp.prediction)
        if hp.scale_factor is None and dm is not None:
            self.model.scale_factor.fill_(self._estimate_scale(dm))
        log.info("latent diffusion: latents %s, scale factor %.4f", self.model.latent_shape, float(self.model.scale_factor))

    @torch.no_grad()
    def _estimate_scale(self, dm: Any) -> float:
        """1 / std of the latents of the first 256 training inputs (LDM appendix D.1)."""
        dm.setup("fit")
        ds = dm.sets["train"] if isinstance(dm, LatentDataModule) else dm.train_set
        x = torch.stack([ds[i][0] for i in range(min(256, len(ds)))])
        z = x if self.hparams.inputs == "latents" else first_stage_latents(self.model.first_stage.encode(x))
        return 1.0 / z.float().std().clamp_min(1e-8).item()

    def _condition(self, batch: tuple[Tensor, ...]) -> Tensor:
        return batch[1] if self.hparams.conditioning == "text" else batch[-1]

    def _z0(self, batch: tuple[Tensor, ...]) -> Tensor:
        x = batch[0]
        if self.hparams.inputs == "latents":
            return self.model.scale_factor * x                          # cached E(x), scaled here
        return self.model.encode(x)                                     # s E(x), first stage frozen

    # --------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = self.model.loss(self._z0(batch), self._condition(batch))
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1000 + batch_idx)  # t, eps and dropout fixed per batch
        loss = self.model.loss(self._z0(batch), self._condition(batch), gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch[0].shape[0])

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(2000 + batch_idx)
        loss = self.model.loss(self._z0(batch), self._condition(batch), gen)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch[0].shape[0])

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr)  # frozen first stage skipped
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, min(hp.warmup_steps, total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- sampling
    def grid_conditions(self, per_class: int) -> Tensor:
        """One row per class (class ids) or per class prompt (token rows), `per_class` columns."""
        enc = self.model.cond_encoder
        if isinstance(enc, ClassEmbedder):
            return torch.arange(enc.num_classes).repeat_interleave(per_class)
        tok = datamodule_of(self).tokenizer
        rows = tok.encode(self.prompts, enc.context_len)
        return rows.repeat_interleave(per_class, dim=0)

    def on_validation_epoch_end(self) -> None:
        """Write the sample grid of this epoch (EMA weights are swapped in during validation)."""
        n = self.hparams.num_samples_per_class
        if n <= 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        from tessera.train.callbacks import run_dir

        y = self.grid_conditions(n).to(self.device)
        x = self.model.sample(
            y, self.hparams.sample_guidance, steps=self.hparams.sample_steps,
            generator=torch.Generator().manual_seed(self.hparams.sample_seed),
        )
        folder = run_dir(self.trainer)
        save_grid(x.clamp(-1, 1), folder / "samples" / f"epoch{self.current_epoch:03d}.png", nrow=n, scale=2)
        save_grid(x.clamp(-1, 1), folder / "samples.png", nrow=n, scale=2)
