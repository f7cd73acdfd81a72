"""`ssl-data-hunger`: "SSL reduces data hunger" (notes 003 and 004), on Fashion-MNIST or the digits.

One small encoder (a ViT with a convolutional stem, 8-px patches: 16 tokens at
32 px) is pre-trained without labels on the training split (`data="fashion"`:
Fashion-MNIST's 55,000 training images; "digits": the bundled digits, the
minutes-fast version) by SimMIM, DINO, the DINOv2 objective with DINO's running
centre and with Sinkhorn-Knopp centring (`pretrain_seeds` runs each, through
`tessera fit`, with the recipes of configs/simmim_digits.yaml and
configs/dino_digits.yaml). Each
initialisation, and the same encoder at random initialisation ("from
scratch"), is then read out with 1%, 10% and 100% of the training labels:
a linear probe on its frozen features and a fine-tuning of all weights with
the same budget (the same number of optimizer steps whatever the fraction),
each over `seeds` seeds (the seed draws the labelled subset, the head and the
order; read-out seed s starts from pre-training run s mod `pretrain_seeds`, so
with as many pre-training seeds as read-out seeds the spread covers the whole
pipeline). Digits test images are shifted by up to +-4 px, as in the issue's
baselines (raw-pixel k-NN 71%, random-init conv encoder 53%); the k-NN column
is DINO's weighted k-NN (k = 20, T = 0.07) of the frozen features with all
labels. A finished pre-training run in OUT/runs/ (its pretrain.json) is reused.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from dataclasses import dataclass, replace
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
START_TEACHER_TEMP = 0.04  # DINO's teacher temperature at the start (and throughout on the digits)
TEST_SHIFT = 4


def dino_task(encoder: dict[str, Any], name: str = "dino_vit_small_patch16_224", hflip: float = 0.0,
              teacher_temp: float = START_TEACHER_TEMP, **extra: Any) -> dict[str, Any]:
    """DINO's digits recipe (the `model:` section of configs/dino_digits.yaml) on `encoder`.

    `hflip` and a `teacher_temp` above 0.04 (reached after a one-epoch warm-up from 0.04) are for the clothes.
    """
    return {"class_path": "tessera.train.ssl.DINOTask", "init_args": {
        "model_name": name,
        "model_args": {"encoder_args": dict(encoder), "out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64,
                       "use_bn_in_head": True, "local_crop_size": 16, "num_local_crops": 4,
                       "teacher_temp": teacher_temp, "warmup_teacher_temp": START_TEACHER_TEMP, "teacher_momentum": 0.99, **extra},
        "lr": 0.0005, "weight_decay": 0.04, "weight_decay_end": 0.4, "warmup_fraction": 0.1,
        "warmup_teacher_temp_epochs": 0 if teacher_temp == START_TEACHER_TEMP else 1, "freeze_last_layer_epochs": 1,
        "global_crop_scale": [0.5, 1.0], "local_crop_scale": [0.25, 0.6], "hflip": hflip, "jitter": 0.4,
        "translate": 4,
    }}


def dinov2_task(encoder: dict[str, Any], hflip: float = 0.0, teacher_temp: float = START_TEACHER_TEMP) -> dict[str, Any]:
    """The DINOv2 objective (DINO + iBOT + KoLeo, running centre) with DINO's digits recipe."""
    return dino_task(encoder, "dinov2_vit_small_patch14", hflip, teacher_temp, centering="centering")


def dinov2_sinkhorn_task(encoder: dict[str, Any], hflip: float = 0.0, teacher_temp: float = START_TEACHER_TEMP) -> dict[str, Any]:
    """The DINOv2 objective with DINOv2's own teacher centring: three Sinkhorn-Knopp iterations."""
    return dino_task(encoder, "dinov2_vit_small_patch14", hflip, teacher_temp, centering="sinkhorn_knopp")


def simmim_task(encoder: dict[str, Any], hflip: float = 0.0, teacher_temp: float = START_TEACHER_TEMP) -> dict[str, Any]:
    """SimMIM's digits recipe (configs/simmim_digits.yaml) on `encoder`: 8-px mask blocks, 10 of 16 masked.

    `teacher_temp` is DINO's and unused here (every builder takes the same arguments).
    """
    return {"class_path": "tessera.train.ssl.SimMIMTask", "init_args": {
        "model_name": "simmim_vit_base_patch16_224",
        "model_args": {"encoder_args": {k: v for k, v in encoder.items() if k != "dynamic_img_size"},
                       "mask_patch_size": 8, "mask_ratio": 0.6},
        "lr": 0.001, "weight_decay": 0.05, "warmup_fraction": 0.05, "crop_scale": [0.67, 1.0], "hflip": hflip,
    }}


# name -> (run folder, task builder, gradient clipping as the configs)
METHODS = {"SimMIM": ("simmim", simmim_task, 5.0), "DINO": ("dino", dino_task, 3.0),
           "DINOv2 objective": ("dinov2", dinov2_task, 3.0),
           "DINOv2 objective, Sinkhorn-Knopp": ("dinov2_sinkhorn", dinov2_sinkhorn_task, 3.0)}


@dataclass(frozen=True)
class Dataset:
    """What changes between the two datasets: data module, views, budgets."""

    data: dict[str, Any]  # the `data:` section (no augmentation: the SSL tasks make their own views)
    epochs: int  # pre-training epochs per method
    finetune_steps: int  # AdamW steps of every fine-tuning
    test_shift: int  # test images shifted by up to this many px
    hflip: float  # horizontal flips in the SSL views
    # DINO's teacher temperature after a one-epoch warm-up from 0.04 (the digits keep 0.04 throughout): at 0.04 the
    # Fashion-MNIST teacher's entropy fell to 0.04 x log K within 400 steps, every image on one of ~7 prototypes
    teacher_temp: float = START_TEACHER_TEMP


DATASETS = {
    "digits": Dataset({"class_path": "tessera.data.DigitsDataModule",
                       "init_args": {"img_size": 32, "in_chans": 1, "augment": {"enabled": False}}}, 60, 300, TEST_SHIFT, 0.0),
    # about 25-35 minutes per pre-training on one core of the 2-core EPYC (860 steps an epoch)
    "fashion": Dataset({"class_path": "tessera.data.idx.IDXDataModule",
                        "init_args": {"img_size": 32, "in_chans": 1, "normalize": "standard",
                                      "augment": {"enabled": False}}}, 4, 600, 0, 0.5, 0.07),
}


def pretrain_data(batch_size: int = 64, spec: Dataset = DATASETS["digits"]) -> dict[str, Any]:
    """The `data:` section of a pre-training run on `spec`'s data at 32 px, without augmentation."""
    section = copy.deepcopy(spec.data)
    section["init_args"]["batch_size"] = batch_size
    return section


def pretrain(root: Path, model: dict[str, Any], *, epochs: int, clip: float, limit_batches: int | None = None,
             seed: int = 0, spec: Dataset = DATASETS["digits"]) -> dict[str, float]:
    """One pre-training run through `tessera fit` (as `common.fit_run`, with the configs' gradient clipping)."""
    import yaml

    from tessera.train.cli import lightning_main

    trainer: dict[str, Any] = {"max_epochs": epochs, "default_root_dir": str(root), "enable_progress_bar": False,
                               "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
                               "check_val_every_n_epoch": 10, "gradient_clip_val": clip, "deterministic": True}
    if limit_batches:
        trainer |= {f"limit_{s}_batches": limit_batches for s in ("train", "val", "test")}
        trainer["check_val_every_n_epoch"] = 1
    config = {"seed_everything": seed, "trainer": trainer, "model": model, "data": pretrain_data(spec=spec),
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


def labelled_splits(spec: Dataset = DATASETS["digits"]
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train images, labels), (test images shifted by up to `spec.test_shift` px, labels), as pre-training sees them."""
    import importlib

    from tessera.data.base import Augment
    from tessera.eval.knn import shift_images

    section = spec.data
    module, _, cls = section["class_path"].rpartition(".")
    kwargs = {**section["init_args"], "augment": Augment(enabled=False)}
    dm = getattr(importlib.import_module(module), cls)(**kwargs)
    dm.setup("fit")
    dm.setup("test")

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.as_tensor(ys)

    (xtr, ytr), (xte, yte) = tensors(dm.train_set), tensors(dm.test_set)
    if spec.test_shift:
        xte = shift_images(xte, spec.test_shift, torch.Generator().manual_seed(0))
    return (xtr, ytr), (xte, yte)


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


def read_out(encoders: list[torch.nn.Module], train: tuple, test: tuple, fractions: tuple[float, ...], seeds: int,
             steps: int, shift: int = TEST_SHIFT) -> dict[str, Any]:
    """k-NN (all labels) of each encoder, then linear probe and fine-tuning per label fraction and seed.

    Read-out seed s starts from `encoders[s % len(encoders)]` (one per pre-training seed).
    """
    from tessera.eval.knn import extract_features, knn_accuracy, shift_images
    from tessera.eval.probe import fine_tune, label_fraction, linear_probe

    (xtr, ytr), (xte, yte) = train, test
    start = time.perf_counter()
    features = []
    for encoder in encoders:
        ftr, _ = extract_features(encoder, (xtr, ytr))
        fte, _ = extract_features(encoder, (xte, yte))
        features.append((ftr, fte))
    result: dict[str, Any] = {"knn": [knn_accuracy(ftr, ytr, fte, yte, k=20, T=0.07) for ftr, fte in features],
                              "probe": {}, "finetune": {}}

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return shift_images(x, shift, g) if shift else x

    for frac in fractions:
        probe, tuned = [], []
        for seed in range(seeds):
            encoder, (ftr, fte) = encoders[seed % len(encoders)], features[seed % len(encoders)]
            idx = label_fraction(ytr, frac, seed)
            probe.append(linear_probe(ftr[idx], ytr[idx], fte, yte, seed=seed).accuracy)
            # the same budget for every fraction and initialisation: `steps` optimizer steps
            tuned.append(fine_tune(copy.deepcopy(encoder), (xtr[idx], ytr[idx]), (xte, yte), epochs=1,
                                   min_steps=steps, augment=augment, seed=seed).accuracy)
        result["probe"][str(frac)], result["finetune"][str(frac)] = probe, tuned
    result["readout_seconds"] = time.perf_counter() - start
    return result


def pretrain_method(out: Path, name: str, seed: int, spec: Dataset, encoder: dict[str, Any] = ENCODER,
                    epochs: int | None = None, limit_batches: int | None = None) -> tuple[Path, dict[str, float]]:
    """Pre-train method `name` with `seed` into OUT/runs/ (the folder `run` reads), or reuse a finished run there.

    Several of these can run side by side (one per core) before `run` reads them all.
    """
    folder, build, clip = METHODS[name]
    run_dir = out / "runs" / (folder if seed == 0 else f"{folder}_s{seed}")
    done = run_dir / "pretrain.json"
    if done.is_file():  # a finished pre-training in OUT is reused (delete OUT/runs/NAME to redo it)
        return run_dir, json.loads(done.read_text())
    metrics = pretrain(run_dir, build(encoder, hflip=spec.hflip, teacher_temp=spec.teacher_temp), epochs=epochs or spec.epochs, clip=clip,
                       limit_batches=limit_batches, seed=seed, spec=spec)
    done.write_text(json.dumps(metrics))
    return run_dir, metrics


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int | None = None,
        methods: tuple[str, ...] = tuple(METHODS), data: str = "digits", pretrain_seeds: int = 1,
        train_limit: int | None = None) -> dict:
    """Pre-train each method, read out every initialisation at each label fraction; write the table.

    Args:
        data: "digits" (bundled; minutes) or "fashion" (Fashion-MNIST IDX files; hours).
        pretrain_seeds: pre-training runs per method (seeds 0, 1, ...); read-out seed s uses run s mod this.
        train_limit: Fashion-MNIST training images used (pre-training and labels); None: all 55,000.
    """
    from tessera.eval.knn import knn_accuracy, pixel_features

    if data not in DATASETS:
        raise ValueError(f"data must be one of {sorted(DATASETS)}, got {data!r}")
    if pretrain_seeds < 1:
        raise ValueError(f"pretrain_seeds must be >= 1, got {pretrain_seeds}")
    spec = DATASETS[data]
    if train_limit is not None:
        if data != "fashion":
            raise ValueError("train_limit applies to data='fashion' only (the digits are used whole)")
        spec = replace(spec, data={**spec.data, "init_args": {**spec.data["init_args"], "train_limit": train_limit}})
    encoder = QUICK_ENCODER if quick else ENCODER
    limit, steps = (2, 3) if quick else (None, spec.finetune_steps)
    train, test = labelled_splits(spec)
    scratch = [random_encoder(encoder, seed) for seed in range(pretrain_seeds)]
    inits: dict[str, tuple[list[torch.nn.Module], list[float] | None]] = {"from scratch": (scratch, None)}
    pretrain_metrics: dict[str, list[dict[str, float]]] = {}
    for name in methods:
        encoders, runs = [], []
        for seed in range(pretrain_seeds):
            run_dir, metrics = pretrain_method(out, name, seed, spec, encoder, epochs=1 if quick else epochs,
                                               limit_batches=limit)
            encoders.append(pretrained_encoder(run_dir))
            runs.append(metrics)
        inits[name] = (encoders, [m["seconds"] for m in runs])
        pretrain_metrics[name] = runs

    raw: dict[str, Any] = {"knn raw pixels": knn_accuracy(pixel_features(train[0]), train[1],
                                                          pixel_features(test[0]), test[1], k=20, T=0.07)}
    rows = [{"initialisation": "raw pixels (no encoder)", "k-NN (%)": f"{100 * raw['knn raw pixels']:.1f}"}]
    for name, (encoders, seconds) in inits.items():
        r = read_out(encoders, train, test, FRACTIONS, seeds, steps, spec.test_shift)
        r["pretrain_seconds"] = seconds
        r["pretrain_metrics"] = pretrain_metrics.get(name)
        raw[name] = r
        row = {"initialisation": name, "pre-training (s)": "-" if seconds is None else fmt(seconds, 1.0, 0),
               "k-NN (%)": fmt(r["knn"])}
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
    title = "Fashion-MNIST" if data == "fashion" else "digits"
    shifted = f" (test shifted by up to +-{spec.test_shift} px)" if spec.test_shift else ""
    notes = (f"{title}, 32 px, {len(train[1])} training / {len(test[1])} test images{shifted}; encoder {encoder}; "
             f"fine-tuning {steps} AdamW steps at every fraction; {seeds} read-out seed(s) (labelled subset, head, "
             f"order); {pretrain_seeds} pre-training run(s) per method (read-out seed s uses run s mod "
             f"{pretrain_seeds}). Fine-tuning gain over from scratch (points): " + "; ".join(gains) + ". ")
    for name, runs in pretrain_metrics.items():
        for seed, m in enumerate(runs):
            if "teacher_entropy_min" in m:
                notes += (f"{name} (pre-training seed {seed}): teacher entropy {m['teacher_entropy_min']:.2f}-"
                          f"{m['teacher_entropy_max']:.2f} x log K over training. ")
            if "test/mean_fill_loss" in m:
                notes += (f"{name} (pre-training seed {seed}): test masked L1 {m['test/loss']:.3f} vs mean fill "
                          f"{m['test/mean_fill_loss']:.3f} ({100 * (1 - m['test/loss'] / m['test/mean_fill_loss']):.0f}% below). ")
    return write_results(out, f"SSL and data hunger (notes 003/004), {title}", columns, rows, {"raw": raw}, notes)


EXPERIMENTS = {"ssl-data-hunger": run}
