"""`ssl-data-hunger`: "SSL reduces data hunger" (notes 003 and 004), measured on the digits.

One small encoder (a ViT with a convolutional stem, 8-px patches: 16 tokens at
32 px) is pre-trained without labels on the digits' training split by SimMIM,
DINO and the DINOv2 objective (one run each, through `tessera fit`, with the
recipes of configs/simmim_digits.yaml and configs/dino_digits.yaml). Each
initialisation, and the same encoder at random initialisation ("from
scratch"), is then read out with 1%, 10% and 100% of the training labels:
a linear probe on its frozen features and a fine-tuning of all weights with
the same budget (the same number of optimizer steps whatever the fraction),
each over `seeds` seeds (the seed draws the labelled subset, the head and the
order). Test images are shifted by up to +-4 px, as in the issue's baselines
(raw-pixel k-NN 71%, random-init conv encoder 53%); the k-NN column is DINO's
weighted k-NN (k = 20, T = 0.07) of the frozen features with all labels.
A finished pre-training run in OUT/runs/ (its pretrain.json) is reused.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

from tessera.experiments.common import fmt, last_metrics, mean_std, write_results

# The encoder every method pre-trains and every read-out starts from.
ENCODER = {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 4, "hybrid_stem": True,
           "dynamic_img_size": True}
QUICK_ENCODER = {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "hybrid_stem": True,
                 "dynamic_img_size": True}
FRACTIONS = (0.01, 0.1, 1.0)
TEST_SHIFT = 4


def dino_task(encoder: dict[str, Any], name: str = "dino_vit_small_patch16_224", **extra: Any) -> dict[str, Any]:
    """DINO's digits recipe (the `model:` section of configs/dino_digits.yaml) on `encoder`."""
    return {"class_path": "tessera.train.ssl.DINOTask", "init_args": {
        "model_name": name,
        "model_args": {"encoder_args": dict(encoder), "out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64,
                       "use_bn_in_head": True, "local_crop_size": 16, "num_local_crops": 4,
                       "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "teacher_momentum": 0.99, **extra},
        "lr": 0.0005, "weight_decay": 0.04, "weight_decay_end": 0.4, "warmup_fraction": 0.1,
        "warmup_teacher_temp_epochs": 0, "freeze_last_layer_epochs": 1,
        "global_crop_scale": [0.5, 1.0], "local_crop_scale": [0.25, 0.6], "hflip": 0.0, "jitter": 0.4,
        "translate": 4,
    }}


def dinov2_task(encoder: dict[str, Any]) -> dict[str, Any]:
    """The DINOv2 objective (DINO + iBOT + KoLeo, running centre) with DINO's digits recipe."""
    return dino_task(encoder, "dinov2_vit_small_patch14", centering="centering")


def simmim_task(encoder: dict[str, Any]) -> dict[str, Any]:
    """SimMIM's digits recipe (configs/simmim_digits.yaml) on `encoder`: 8-px mask blocks, 10 of 16 masked."""
    return {"class_path": "tessera.train.ssl.SimMIMTask", "init_args": {
        "model_name": "simmim_vit_base_patch16_224",
        "model_args": {"encoder_args": {k: v for k, v in encoder.items() if k != "dynamic_img_size"},
                       "mask_patch_size": 8, "mask_ratio": 0.6},
        "lr": 0.001, "weight_decay": 0.05, "warmup_fraction": 0.05, "crop_scale": [0.67, 1.0], "hflip": 0.0,
    }}


# name -> (task builder, pre-training epochs, gradient clipping as the configs)
METHODS = {"SimMIM": (simmim_task, 60, 5.0), "DINO": (dino_task, 60, 3.0), "DINOv2 objective": (dinov2_task, 60, 3.0)}


def pretrain_data(batch_size: int = 64) -> dict[str, Any]:
    """The digits at 32 px without augmentation (the SSL tasks make their own views)."""
    return {"class_path": "tessera.data.DigitsDataModule",
            "init_args": {"img_size": 32, "in_chans": 1, "batch_size": batch_size, "augment": {"enabled": False}}}


def pretrain(root: Path, model: dict[str, Any], *, epochs: int, clip: float, limit_batches: int | None = None,
             seed: int = 0) -> dict[str, float]:
    """One pre-training run through `tessera fit` (as `common.fit_run`, with the configs' gradient clipping)."""
    import yaml

    from tessera.train.cli import lightning_main

    trainer: dict[str, Any] = {"max_epochs": epochs, "default_root_dir": str(root), "enable_progress_bar": False,
                               "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
                               "check_val_every_n_epoch": 10, "gradient_clip_val": clip, "deterministic": True}
    if limit_batches:
        trainer |= {f"limit_{s}_batches": limit_batches for s in ("train", "val", "test")}
        trainer["check_val_every_n_epoch"] = 1
    config = {"seed_everything": seed, "trainer": trainer, "model": model, "data": pretrain_data(),
              "checkpoint": {"every_n_train_steps": 10_000}}
    start = time.time()
    if lightning_main(["fit", "--config", yaml.safe_dump(config, sort_keys=False)]) != 0:
        raise RuntimeError(f"pre-training in {root} failed")
    metrics = last_metrics(root / "metrics.csv")
    metrics["seconds"] = time.time() - start
    with open(root / "metrics.csv", newline="") as f:  # DINO's collapse watch over the whole run
        entropy = [float(r["train/teacher_entropy"]) for r in csv.DictReader(f) if r.get("train/teacher_entropy")]
    if entropy:
        metrics["teacher_entropy_min"], metrics["teacher_entropy_max"] = min(entropy), max(entropy)
    return metrics


def labelled_splits(shift: int = TEST_SHIFT) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train images, labels), (test images shifted by up to `shift` px, labels): the pre-training's normalisation."""
    from tessera.data import DigitsDataModule
    from tessera.data.base import Augment
    from tessera.eval.knn import shift_images

    dm = DigitsDataModule(img_size=32, in_chans=1, augment=Augment(enabled=False))
    dm.setup("fit")
    dm.setup("test")

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.as_tensor(ys)

    (xtr, ytr), (xte, yte) = tensors(dm.train_set), tensors(dm.test_set)
    return (xtr, ytr), (shift_images(xte, shift, torch.Generator().manual_seed(0)), yte)


def random_encoder(encoder: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The same encoder at random initialisation (the from-scratch row)."""
    import tessera

    torch.manual_seed(seed)
    return tessera.create_model("vit_small_patch16_224", num_classes=0, img_size=32, in_chans=1, **encoder).eval()


def pretrained_encoder(run_dir: Path) -> torch.nn.Module:
    """The exported wrapper's `features_encoder` (DINO: the teacher's; SimMIM: its encoder)."""
    from tessera.train.cli import load_run

    model, _ = load_run(run_dir)
    return model.features_encoder.eval()


def read_out(encoder: torch.nn.Module, train: tuple, test: tuple, fractions: tuple[float, ...], seeds: int,
             steps: int) -> dict[str, Any]:
    """k-NN (all labels), then linear probe and fine-tuning per label fraction and seed: accuracies and seconds."""
    from tessera.eval.knn import extract_features, knn_accuracy, shift_images
    from tessera.eval.probe import fine_tune, label_fraction, linear_probe

    (xtr, ytr), (xte, yte) = train, test
    start = time.perf_counter()
    ftr, _ = extract_features(encoder, (xtr, ytr))
    fte, _ = extract_features(encoder, (xte, yte))
    result: dict[str, Any] = {"knn": knn_accuracy(ftr, ytr, fte, yte, k=20, T=0.07), "probe": {}, "finetune": {}}

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return shift_images(x, TEST_SHIFT, g)

    for frac in fractions:
        probe, tuned = [], []
        for seed in range(seeds):
            idx = label_fraction(ytr, frac, seed)
            probe.append(linear_probe(ftr[idx], ytr[idx], fte, yte, seed=seed).accuracy)
            # the same budget for every fraction and initialisation: `steps` optimizer steps
            tuned.append(fine_tune(copy.deepcopy(encoder), (xtr[idx], ytr[idx]), (xte, yte), epochs=1,
                                   min_steps=steps, augment=augment, seed=seed).accuracy)
        result["probe"][str(frac)], result["finetune"][str(frac)] = probe, tuned
    result["readout_seconds"] = time.perf_counter() - start
    return result


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int | None = None,
        methods: tuple[str, ...] = tuple(METHODS)) -> dict:
    """Pre-train each method, read out every initialisation at each label fraction; write the table."""
    from tessera.eval.knn import knn_accuracy, pixel_features

    encoder = QUICK_ENCODER if quick else ENCODER
    limit, steps = (2, 3) if quick else (None, 300)
    train, test = labelled_splits()
    inits: dict[str, tuple[torch.nn.Module, float | None]] = {"from scratch": (random_encoder(encoder), None)}
    pretrain_metrics: dict[str, dict[str, float]] = {}
    for name in methods:
        build, default_epochs, clip = METHODS[name]
        run_dir = out / "runs" / name.split()[0].lower()
        done = run_dir / "pretrain.json"
        if done.is_file():  # a finished pre-training in OUT is reused (delete OUT/runs/NAME to redo it)
            metrics = json.loads(done.read_text())
        else:
            metrics = pretrain(run_dir, build(encoder), epochs=1 if quick else (epochs or default_epochs), clip=clip,
                               limit_batches=limit)
            done.write_text(json.dumps(metrics))
        inits[name] = (pretrained_encoder(run_dir), metrics["seconds"])
        pretrain_metrics[name] = metrics

    raw: dict[str, Any] = {"knn raw pixels": knn_accuracy(pixel_features(train[0]), train[1],
                                                          pixel_features(test[0]), test[1], k=20, T=0.07)}
    rows = [{"initialisation": "raw pixels (no encoder)", "k-NN (%)": f"{100 * raw['knn raw pixels']:.1f}"}]
    for name, (enc, seconds) in inits.items():
        r = read_out(enc, train, test, FRACTIONS, seeds, steps)
        r["pretrain_seconds"] = seconds
        r["pretrain_metrics"] = pretrain_metrics.get(name)
        raw[name] = r
        row = {"initialisation": name, "pre-training (s)": "-" if seconds is None else f"{seconds:.0f}",
               "k-NN (%)": f"{100 * r['knn']:.1f}"}
        for frac in FRACTIONS:
            row[f"probe {frac:.0%}"] = fmt(r["probe"][str(frac)])
            row[f"fine-tune {frac:.0%}"] = fmt(r["finetune"][str(frac)])
        rows.append(row)
    columns = ["initialisation", "pre-training (s)", "k-NN (%)"]
    columns += [f"probe {f:.0%}" for f in FRACTIONS] + [f"fine-tune {f:.0%}" for f in FRACTIONS]
    scratch = raw["from scratch"]
    gains = []
    for name in methods:
        d = [100 * (mean_std(raw[name]["finetune"][str(f)])[0] - mean_std(scratch["finetune"][str(f)])[0])
             for f in FRACTIONS]
        gains.append(f"{name} {', '.join(f'{f:.0%} {g:+.1f}' for f, g in zip(FRACTIONS, d))}")
    notes = (f"Digits, 32 px, {len(train[1])} training / {len(test[1])} test images (test shifted by up to "
             f"+-{TEST_SHIFT} px); encoder {encoder}; fine-tuning {steps} AdamW steps at every fraction; "
             f"{seeds} seed(s) (labelled subset, head, order); one pre-training run per method (seed 0). "
             f"Fine-tuning gain over from scratch (points): " + "; ".join(gains) + ". ")
    for name, m in pretrain_metrics.items():
        if "teacher_entropy_min" in m:
            notes += (f"{name}: teacher entropy {m['teacher_entropy_min']:.2f}-{m['teacher_entropy_max']:.2f} "
                      f"x log K over training. ")
        if "test/mean_fill_loss" in m:
            notes += (f"{name}: test masked L1 {m['test/loss']:.3f} vs mean fill {m['test/mean_fill_loss']:.3f} "
                      f"({100 * (1 - m['test/loss'] / m['test/mean_fill_loss']):.0f}% below). ")
    return write_results(out, "SSL and data hunger (notes 003/004), digits", columns, rows, {"raw": raw}, notes)


EXPERIMENTS = {"ssl-data-hunger": run}
