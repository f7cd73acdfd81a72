"""CoCa training: stage 2 of the paper's recipe (contrastive + captioning), for any registered encoder.

Stage 1, supervised pre-training of the encoder, is plain classification:
`ClassificationTask` on a caption DataModule with `with_captions: false`
(configs/coca_emoji_stage1.yaml); its exported folder is this task's
`encoder_checkpoint` (the classifier head is dropped).

Stage 2 (`CoCaTask`) trains the whole CoCa model on (image, caption) batches
from a `tessera.data.captions` DataModule, whose tokenizer fixes `vocab_size`
and `context_length`. Validation and test report: the loss terms, retrieval
recall@1/5/10 both ways, zero-shot accuracy from the DataModule's class prompts,
and the exact-match rate, BLEU-4 and token F1 of greedy (test: also beam) captions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from tessera.train.callbacks import EMAHost, datamodule_of, run_dir
from tessera.train.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class CoCaTask(EMAHost, L.LightningModule):
    """Train and evaluate a registered CoCa wrapper on image-caption pairs.

    Args:
        model_name: a registered CoCa name (`tessera.list_models("coca*")`).
        model_args: config overrides (dim, depths, encoder_args, loss weights, ...);
            `vocab_size`, `context_length` and the encoder's `img_size` / `in_chans`
            come from the DataModule unless given.
        encoder_checkpoint: stage-1 weights of the encoder (a folder or file `create_model`
            reads; the classifier head is dropped).
        checkpoint: initial weights of the whole CoCa model.
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_fraction: share of the optimizer steps spent warming up linearly.
        min_lr_ratio: final LR as a fraction of `lr`.
        beam_width: beams of the test-time beam-search captions.
        ema_decay: decay of an EMA of the weights (0 = off).
        ema_eval: evaluate / export with the EMA weights.
    """

    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(
        self,
        model_name: str = "coca_vit_tiny",
        model_args: dict[str, Any] | None = None,
        encoder_checkpoint: str | None = None,
        checkpoint: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        beam_width: int = 4,
        ema_decay: float = 0.0,
        ema_eval: bool = True,
    ) -> None:
        super().__init__()
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.init_ema(ema_decay, eval_with_ema=ema_eval)
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self._eval: dict[str, list[Tensor]] = {}
        self.test_results: dict[str, Any] = {}

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of `create_model`: explicit ones, then what the DataModule knows."""
        kw: dict[str, Any] = dict(self.hparams.model_args or {})
        dm = datamodule_of(self)
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            kw.setdefault("vocab_size", dm.tokenizer.vocab_size)
            kw.setdefault("context_length", dm.context_length)
        if dm is not None:
            enc = dict(kw.get("encoder_args") or {})
            enc.setdefault("img_size", dm.img_size)
            enc.setdefault("in_chans", dm.in_chans)
            kw["encoder_args"] = enc
        return kw

    def configure_model(self) -> None:
        """Build CoCa (once); load stage-1 encoder weights when given."""
        if self.model is not None:
            return
        from tessera.core.registry import create_model

        hp = self.hparams
        self.model = create_model(hp.model_name, checkpoint=hp.checkpoint, **self.model_kwargs())
        if hp.encoder_checkpoint:
            c = self.model.config
            encoder = create_model(c.encoder, num_classes=0, checkpoint=hp.encoder_checkpoint, **dict(c.encoder_args))
            self.model.encoder.load_state_dict(encoder.state_dict())
            log.info("encoder weights from %s", hp.encoder_checkpoint)

    def forward(self, images: Tensor, ids: Tensor) -> Any:
        """The model's output record (loss, terms, logits, embeddings)."""
        return self.model(images, ids)

    # --------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        """One step: both losses; logs them, the logit scale and the LR."""
        x, ids, _ = batch
        out = self(x, ids)
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/contrastive", out.contrastive_loss)
        self.log("train/caption", out.caption_loss, prog_bar=True)
        self.log("train/logit_scale", out.logit_scale)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return out.loss

    def configure_optimizers(self) -> Any:
        """AdamW + per-step warm-up/cosine schedule over the whole run."""
        hp = self.hparams
        opt, sched = adamw_warmup_cosine(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
            total_steps=self.trainer.estimated_stepping_batches,
            warmup_fraction=hp.warmup_fraction, min_lr_ratio=hp.min_lr_ratio,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        """Keep the run's tokenizer beside its checkpoints (also in preprocess.json of the export)."""
        dm = datamodule_of(self)
        if self.trainer.is_global_zero and dm is not None and getattr(dm, "tokenizer", None) is not None:
            dm.tokenizer.save(run_dir(self.trainer) / "tokenizer.json")

    # ------------------------------------------------------------- evaluation
    def _eval_batch(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> None:
        from tessera.ssl.coca_generate import generate

        x, ids, y = batch
        out = self(x, ids)
        n = x.shape[0]
        self.log(f"{stage}/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log(f"{stage}/contrastive", out.contrastive_loss, sync_dist=True, batch_size=n)
        self.log(f"{stage}/caption", out.caption_loss, sync_dist=True, batch_size=n)
        width = self.model.config.context_length
        keep = {"image": out.image_embed, "text": out.text_embed, "label": y, "ids": ids,
                "greedy": _pad(generate(self.model, x, "greedy"), width)}
        if stage == "test":
            keep["beam"] = _pad(generate(self.model, x, "beam", beam_width=self.hparams.beam_width), width)
        for k, v in keep.items():
            self._eval.setdefault(k, []).append(v.detach())

    def _eval_end(self, stage: str) -> dict[str, Any]:
        from tessera.eval.captioning import bleu4, exact_match, token_f1
        from tessera.eval.retrieval import retrieval_recall, zero_shot_accuracy

        parts = {k: torch.cat(v) for k, v in self._eval.items()}
        self._eval = {}
        if self.trainer.world_size > 1:  # retrieval ranks every caption against every image
            parts = {k: v.flatten(0, 1) for k, v in self.all_gather(parts).items()}
        dm = datamodule_of(self)
        metrics: dict[str, float] = dict(retrieval_recall(parts["image"], parts["text"]))
        results: dict[str, Any] = {}
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            tok = dm.tokenizer
            if dm.class_prompts:
                prompts = tok.encode(dm.class_prompts, self.model.config.context_length)
                class_embed = self.model.embed_text(prompts.to(self.device))
                metrics["zero_shot_acc"] = zero_shot_accuracy(parts["image"], class_embed, parts["label"])
                metrics["majority_class_acc"] = float(
                    torch.bincount(parts["label"], minlength=len(dm.class_prompts)).max() / len(parts["label"])
                )
            refs = tok.decode(parts["ids"])
            for method in ("greedy", "beam"):
                if method not in parts:
                    continue
                caps = tok.decode(parts[method])
                metrics[f"{method}_exact"] = exact_match(caps, refs)
                metrics[f"{method}_bleu4"] = bleu4(caps, refs)
                metrics[f"{method}_token_f1"] = token_f1(caps, refs)
                results[f"{method}_captions"] = list(zip(refs, caps))
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, prog_bar=k in ("zero_shot_acc", "greedy_exact"), rank_zero_only=True)
        results["metrics"] = metrics
        return results

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """Loss terms; embeddings and greedy captions kept for the epoch-end metrics."""
        self._eval_batch(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Retrieval recall, zero-shot accuracy, caption metrics of the validation split."""
        self._eval_end("val")

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        """As validation, plus beam-search captions."""
        self._eval_batch(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Test metrics; every (reference, greedy, beam) caption written to RUN/coca_test.json."""
        self.test_results = self._eval_end("test")
        if self.trainer.is_global_zero:
            path = run_dir(self.trainer) / "coca_test.json"
            path.write_text(json.dumps(self.test_results, indent=1))

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Greedy caption ids (B, L) of the batch's images."""
        from tessera.ssl.coca_generate import generate

        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return generate(self.model, x, "greedy")


def _pad(ids: Tensor, width: int) -> Tensor:
    """Right-pad generated rows (B, L') with [PAD] (id 0) to (B, width), so batches concatenate."""
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=0)
