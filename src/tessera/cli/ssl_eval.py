"""`tessera ssl-eval RUN`: k-NN, linear probe and label-fraction fine-tuning of a pre-trained encoder.

    tessera ssl-eval runs/dino_digits                       k-NN + linear probe (+ baselines)
    tessera ssl-eval runs/dino_digits --test-shift 4        test images shifted by up to 4 px
    tessera ssl-eval runs/dino_digits --finetune --fractions 0.01 0.1 1 --seeds 0 1 2

The run folder holds the exported wrapper (SimMIM / DINO / DINOv2, or a plain
encoder) and the run's config.yaml, whose DataModule gives the labelled train
and test splits (loaded without augmentation). Baselines on the same splits:
raw pixels (k-NN) and the same architecture at random initialisation (k-NN,
linear probe, fine-tuning "from scratch"). Results go to RUN/ssl_eval.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _features_encoder(model: Any) -> Any:
    """The encoder to evaluate: a wrapper's `features_encoder`, or the model itself when it is an encoder."""
    from tessera.core.registry import model_kinds

    if "encoder" in model_kinds(model.arch):
        return model
    encoder = getattr(model, "features_encoder", None)
    if encoder is None:
        raise ValueError(f"{model.arch!r} is neither an encoder nor an SSL wrapper with a features_encoder")
    return encoder


def load_splits(run: Path) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(train images, labels), (test images, labels) of the run's DataModule, without augmentation."""
    import importlib
    import inspect

    import torch
    import yaml
    from torch.utils.data import DataLoader

    from tessera.data.base import Augment

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{str(run)!r} has no config.yaml (written by `tessera fit`): cannot tell its data")
    data = (yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}
    if "class_path" not in data:
        raise ValueError(f"{cfg_path} names no DataModule (data.class_path)")
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(data.get("init_args") or {})
    if "augment" in inspect.signature(cls).parameters:
        args["augment"] = Augment(enabled=False)
    dm = cls(**args)
    dm.setup("fit")
    dm.setup("test")

    def tensors(ds: Any) -> tuple[Any, Any]:
        xs, ys = zip(*DataLoader(ds, batch_size=512, shuffle=False))
        return torch.cat(xs), torch.cat(ys)

    return tensors(dm.train_set), tensors(dm.test_set)


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))
    return m, s


def ssl_eval_main(argv: list[str]) -> int:
    """k-NN / linear probe / fine-tuning of a pre-trained run's encoder, against baselines."""
    import torch

    import tessera
    from tessera.eval.knn import extract_features, knn_accuracy, pixel_features, shift_images
    from tessera.eval.probe import fine_tune, label_fraction, linear_probe
    from tessera.train.cli import load_run

    p = argparse.ArgumentParser(prog="tessera ssl-eval", description=ssl_eval_main.__doc__)
    p.add_argument("run", help="run folder with the exported model and config.yaml")
    p.add_argument("--k", type=int, default=20, help="neighbours of the weighted k-NN")
    p.add_argument("--temperature", type=float, default=0.07, help="T of the k-NN vote weights")
    p.add_argument("--test-shift", type=int, default=0, help="shift test images by up to this many pixels")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument("--no-baselines", action="store_true", help="skip raw pixels / random init")
    p.add_argument("--finetune", action="store_true", help="fine-tune on label fractions (pre-trained vs scratch)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="label fractions")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs over the labelled subset")
    p.add_argument("--min-steps", type=int, default=300, help="fine-tuning steps at least (small fractions)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak learning rate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = Path(args.run)
    model, _ = load_run(run)
    encoder = _features_encoder(model).eval()
    (xtr, ytr), (xte, yte) = load_splits(run)
    if args.test_shift:
        xte = shift_images(xte, args.test_shift, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    scratch_model = tessera.create_model(model.arch, **vars(model.config)) if model.config is not None else None
    scratch = _features_encoder(scratch_model).eval()

    results: dict[str, Any] = {"run": str(run), "architecture": model.arch, "test_shift": args.test_shift,
                               "k": args.k, "T": args.temperature, "train": len(ytr), "test": len(yte)}
    t0 = time.perf_counter()
    ftr, _ = extract_features(encoder, (xtr, ytr))
    fte, _ = extract_features(encoder, (xte, yte))
    results["knn"] = knn_accuracy(ftr, ytr, fte, yte, args.k, args.temperature)
    if not args.no_probe:
        results["linear_probe"] = linear_probe(ftr, ytr, fte, yte).accuracy
    if not args.no_baselines:
        results["knn_pixels"] = knn_accuracy(pixel_features(xtr), ytr, pixel_features(xte), yte, args.k, args.temperature)
        rtr, _ = extract_features(scratch, (xtr, ytr))
        rte, _ = extract_features(scratch, (xte, yte))
        results["knn_random_init"] = knn_accuracy(rtr, ytr, rte, yte, args.k, args.temperature)
        if not args.no_probe:
            results["linear_probe_random_init"] = linear_probe(rtr, ytr, rte, yte).accuracy
    results["eval_seconds"] = round(time.perf_counter() - t0, 1)

    if args.finetune:
        from tessera.data.transforms import RandomTranslate

        shift = RandomTranslate(2)

        def augment(x: Any, g: Any) -> Any:
            return torch.stack([shift(img, g) for img in x])

        table: dict[str, Any] = {}
        for frac in args.fractions:
            row: dict[str, Any] = {}
            for name, enc in (("pretrained", encoder), ("scratch", scratch)):
                accs = []
                for seed in args.seeds:
                    idx = label_fraction(ytr, frac, seed)
                    res = fine_tune(enc, (xtr[idx], ytr[idx]), (xte, yte), epochs=args.epochs, lr=args.lr,
                                    augment=augment, min_steps=args.min_steps, seed=seed)
                    accs.append(res.accuracy)
                m, s = _mean_std(accs)
                row[name] = {"mean": m, "std": s, "runs": accs}
            row["labels"] = int(len(label_fraction(ytr, frac, 0)))
            table[str(frac)] = row
        results["finetune"] = table

    (run / "ssl_eval.json").write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{model.arch} from {run} ({results['train']} train / {results['test']} test images, "
          f"test shift +-{args.test_shift} px)")
    for key in ("knn", "linear_probe", "knn_pixels", "knn_random_init", "linear_probe_random_init"):
        if key in results:
            print(f"  {key:26s} {100 * results[key]:6.2f}%")
    for frac, row in results.get("finetune", {}).items():
        pre, scr = row["pretrained"], row["scratch"]
        print(f"  fine-tune {float(frac):>5.0%} ({row['labels']:5d} labels): pre-trained "
              f"{100 * pre['mean']:.2f} +- {100 * pre['std']:.2f}%, scratch {100 * scr['mean']:.2f} +- {100 * scr['std']:.2f}%")
    return 0


COMMANDS = {"ssl-eval": ssl_eval_main}
