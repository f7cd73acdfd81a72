"""Token transformer training: MaskGIT or next-token prediction over a frozen tokenizer's codes.

    codes = E(x) (B, h w)                          frozen discrete tokenizer (VQ-VAE / VQ-GAN / dVAE)
    masked: L = CE on the masked positions, mask ~ cosine schedule (MaskGIT)
    causal: L = - sum_i log p(c_i | class, c_<i)   (bits per token logged as val/bits)
    multimodal: <text> text <image> codes and <image> codes <text> text, half of each per batch

Batches are (images, labels) from an image DataModule, or (images, tokens, labels) from a
caption DataModule (multimodal). After each validation a grid of samples (one row per class,
or text -> image for the class prompts) goes to `RUN/samples.png`; `RUN/tokens.json` records
the first stage and the layout, so that a run's samples can be decoded later.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from tessera.core.registry import create_model
from tessera.diffusion.images import save_grid
from tessera.generative import MultimodalLayout, TokenTransformer, generate, maskgit_sample, random_mask
from tessera.train.callbacks import EMAHost, datamodule_of, run_dir
from tessera.train.latent_diffusion import load_first_stage
from tessera.train.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)

__all__ = ["TokenTransformerTask"]


class TokenTransformerTask(EMAHost, L.LightningModule):
    """Train a TokenTransformer on the codes of a frozen discrete tokenizer.

    Args:
        first_stage: a registered discrete tokenizer (codes from `encode(x).codes`).
        first_stage_checkpoint: its trained weights; None: random (tests only).
        first_stage_args: its config overrides (img_size / in_chans default to the data's).
        model: `maskgit_digits` (masked) or `tokengpt_digits` (causal), or any TokenTransformer name.
        model_args: config overrides (dim, depth, heads, ...); vocab_size / seq_len / num_classes
            come from the tokenizer and the data.
        multimodal: one causal model over text and image tokens in both orders (caption data).
        inputs: "images" (encode on the fly) or "codes" (batches (codes, labels) from
            `LatentDataModule(key="codes")` over a `tessera cache-latents` file of the same tokenizer).
        lr, weight_decay, warmup_steps, min_lr_ratio, ema_decay: AdamW, warm-up + cosine, EMA.
        num_samples_per_class: grid columns (0: none); maskgit_steps: decoding steps of the grid;
        temperature, top_k: next-token sampling of the grid; sample_seed: its seed.
    """

    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        first_stage: str = "vqvae_ema_f4",
        first_stage_checkpoint: str | None = None,
        first_stage_args: dict[str, Any] | None = None,
        model: str = "maskgit_digits",
        model_args: dict[str, Any] | None = None,
        multimodal: bool = False,
        inputs: Literal["images", "codes"] = "images",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.0,
        num_samples_per_class: int = 8,
        maskgit_steps: int = 8,
        temperature: float = 1.0,
        top_k: int | None = None,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        if inputs not in ("images", "codes"):
            raise ValueError(f"inputs must be 'images' or 'codes', got {inputs!r}")
        if inputs == "codes" and multimodal:
            raise ValueError("inputs='codes' reads (codes, labels) batches; the multimodal sequence needs caption images")
        self.init_ema(ema_decay, eval_with_ema=True)
        self.save_hyperparameters()
        self.model: TokenTransformer | None = None
        self.first_stage: torch.nn.Module | None = None
        self.layout: MultimodalLayout | None = None
        self.grid: tuple[int, int] = (0, 0)


    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        dm = datamodule_of(self)
        fs_args = dict(hp.first_stage_args or {})
        for key in ("img_size", "in_chans"):  # the data's, unless given (a code cache has no image size)
            if key not in fs_args and getattr(dm, key, None) and hp.inputs == "images":
                fs_args[key] = getattr(dm, key)
        # the frozen tokenizer is not a submodule: its weights stay out of this task's checkpoints and EMA
        first = load_first_stage(hp.first_stage, hp.first_stage_checkpoint, fs_args).eval().requires_grad_(False)
        self.__dict__["first_stage"] = first
        with torch.no_grad():
            codes = first.encode(torch.zeros(1, *first.input_size)).codes
        if codes is None:
            raise ValueError(f"{hp.first_stage} has continuous latents; a token transformer needs a discrete tokenizer")
        self.grid = tuple(codes.shape[1:])
        K = getattr(first.config, "num_codes", None)
        if K is None:
            raise ValueError(f"{hp.first_stage}'s config has no num_codes")
        N = codes[0].numel()
        kw: dict[str, Any] = dict(hp.model_args or {})
        if hp.multimodal:
            tok = getattr(dm, "tokenizer", None)
            if tok is None and dm is not None:
                dm.setup("fit")
                tok = dm.tokenizer
            if tok is None:
                raise ValueError("multimodal=True needs a caption DataModule (with a tokenizer)")
            self.layout = MultimodalLayout(tok.vocab_size, K, dm.context_length, N, tok.pad_id, tok.eos_id)
            kw.update(vocab_size=self.layout.vocab_size, seq_len=self.layout.seq_len, num_classes=0)
        else:
            kw.update(vocab_size=K, seq_len=N, num_classes=getattr(dm, "num_classes", 0) or 0)
        self.model = create_model(hp.model, **kw)
        if hp.multimodal and not self.model.causal:
            raise ValueError("the multimodal sequence needs a causal model (objective='causal')")

    # ------------------------------------------------------------------ data
    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images (or cached (B, h, w) codes) -> (B, h w) code ids of the frozen tokenizer."""
        if self.hparams.inputs == "codes":
            if x.dtype != torch.int64 or x.shape[1:] != self.grid:
                raise ValueError(f"expected cached codes (B, {self.grid[0]}, {self.grid[1]}) int64 of the first stage, "
                                 f"got {tuple(x.shape)} {x.dtype}")
            return x.flatten(1)
        self.first_stage.to(x.device)  # not a submodule, so Lightning does not move it
        return self.first_stage.encode(x).codes.flatten(1)

    def _loss(self, batch: tuple[Tensor, ...], generator: torch.Generator | None = None) -> Tensor:
        codes = self.codes(batch[0])
        if self.layout is not None:
            text_first = torch.rand(codes.shape[0], generator=generator) < 0.5      # both orders, half each
            tokens, scored = self.layout.sequence(batch[1], codes, text_first.to(codes.device))
            return self.model(tokens, None, scored).loss
        y = batch[-1] if self.model.config.num_classes else None
        if self.model.causal:
            return self.model(codes, y).loss
        return self.model(codes, y, random_mask(codes, generator)).loss

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        loss = self._loss(batch, torch.Generator().manual_seed(1000 + batch_idx))
        B = batch[0].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=B)
        if self.model.causal:
            self.log("val/bits", loss / math.log(2), batch_size=B)  # bits per scored token

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        loss = self._loss(batch, torch.Generator().manual_seed(2000 + batch_idx))
        self.log("test/loss", loss, batch_size=batch[0].shape[0])

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, min(hp.warmup_steps, total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample_codes(self, y: Tensor | None, n: int, generator: torch.Generator) -> Tensor:
        """(n, h w) codes: MaskGIT decoding or next-token sampling, per class when y is given."""
        hp = self.hparams
        if self.model.causal:
            return generate(self.model, self.model.config.seq_len, y=y, batch_size=n, temperature=hp.temperature,
                            top_k=hp.top_k, generator=generator)
        return maskgit_sample(self.model, n, y, hp.maskgit_steps, hp.temperature, generator=generator)

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            folder = run_dir(self.trainer)
            folder.mkdir(parents=True, exist_ok=True)
            hp = self.hparams
            spec = {"first_stage": hp.first_stage, "first_stage_checkpoint": hp.first_stage_checkpoint,
                    "first_stage_args": hp.first_stage_args, "grid": list(self.grid),
                    "layout": None if self.layout is None else {k: getattr(self.layout, k) for k in
                                                               ("text_vocab", "num_codes", "text_len", "image_len", "pad_id", "eos_id")}}
            (folder / "tokens.json").write_text(json.dumps(spec, indent=2))

    def on_validation_epoch_end(self) -> None:
        per = self.hparams.num_samples_per_class
        if per <= 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        g = torch.Generator().manual_seed(self.hparams.sample_seed)
        if self.layout is not None:
            dm = datamodule_of(self)
            rows = dm.tokenizer.encode(dm.class_prompts, dm.context_length).repeat_interleave(per, dim=0)
            codes = self.layout.text_to_image(self.model, rows, temperature=self.hparams.temperature,
                                              top_k=self.hparams.top_k, generator=g)
        else:
            K = self.model.config.num_classes
            y = torch.arange(K).repeat_interleave(per) if K else None
            codes = self.sample_codes(y, per * max(K, 1), g)
        x = self.first_stage.decode(codes.view(-1, *self.grid).to(self.device))
        folder = run_dir(self.trainer)
        save_grid(x.clamp(-1, 1), folder / "samples" / f"epoch{self.current_epoch:03d}.png", nrow=per, scale=2)
        save_grid(x.clamp(-1, 1), folder / "samples.png", nrow=per, scale=2)
