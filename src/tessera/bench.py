"""`tessera bench`: throughput of a model, and the training engine's overhead over a plain loop.

    tessera bench model swin_tiny_patch4_window7_224 --batch-size 32 --mode train
    tessera bench engine --model swin_tiny_patch4_window7_224 --batch-size 16 --steps 20

`engine` trains the same model on the same synthetic batches twice: with a
hand-written PyTorch loop (forward, cross-entropy, backward, AdamW step,
LR-scheduler step) and with `tessera fit`'s Lightning engine (ClassificationTask
plus the callbacks every run has), and reports images/s of both and the
overhead. Timing starts after `warmup` steps in both.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _batch(model: nn.Module, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c, h, w = model.input_size
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, c, h, w, generator=g), torch.randint(0, model.config.num_classes, (batch_size,), generator=g)


def model_throughput(
    model: nn.Module, batch_size: int, steps: int, mode: Literal["infer", "train"] = "infer", warmup: int = 2
) -> float:
    """Images per second of forward (infer) or forward + backward + AdamW step (train)."""
    x, y = _batch(model, batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    model.train(mode == "train")
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        if opt is None:
            with torch.inference_mode():
                model(x)
        else:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return batch_size * steps / (time.perf_counter() - t0)


def plain_loop_throughput(model: nn.Module, loader: DataLoader, warmup: int) -> float:
    """Images/s of a hand-written training loop (AdamW + warm-up/cosine LR per step) over `loader`."""
    from tessera.train.optim import param_groups, warmup_cosine

    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    total = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, 1, 0.01))
    model.train()
    seen, t0 = 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):  # the engine checks every loss too
            raise RuntimeError("non-finite loss")
        seen += x.shape[0]
    return seen / (time.perf_counter() - t0)


def engine_throughput(model_name: str, model_args: dict[str, Any], loader: DataLoader, warmup: int) -> float:
    """Images/s of the same training through tessera's Lightning engine (as `tessera fit` runs it)."""
    import lightning as L

    from tessera.train.callbacks import FiniteLossCheck, RestoreLoaderState, StepSeed
    from tessera.train.classification import ClassificationTask

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.t0, self.seen, self.t1 = 0.0, 0, 0.0

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
            if idx == warmup:
                self.t0, self.seen = time.perf_counter(), 0

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
            self.seen += batch[0].shape[0]
            self.t1 = time.perf_counter()

    class Data(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader

    timer = Timer()
    task = ClassificationTask(model_name, model_args, lr=1e-3, warmup_fraction=1 / len(loader), label_smoothing=0.1)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
        callbacks=[StepSeed(), RestoreLoaderState(), FiniteLossCheck(), timer],
    )
    trainer.fit(task, datamodule=Data())
    return timer.seen / (timer.t1 - timer.t0)


def engine_overhead(
    model_name: str, model_args: dict[str, Any], batch_size: int, steps: int, warmup: int = 3, repeats: int = 1
) -> dict[str, float]:
    """Best-of-`repeats` images/s of the plain loop and of the engine, and the engine's overhead in %."""
    import tessera

    probe = tessera.create_model(model_name, **model_args)
    x, y = _batch(probe, batch_size * (steps + warmup))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    plain, engine = 0.0, 0.0
    for _ in range(repeats):
        torch.manual_seed(0)
        plain = max(plain, plain_loop_throughput(tessera.create_model(model_name, **model_args), loader, warmup))
        torch.manual_seed(0)
        engine = max(engine, engine_throughput(model_name, model_args, loader, warmup))
    return {"plain_img_s": plain, "engine_img_s": engine, "overhead_pct": 100 * (plain / engine - 1)}


def bench_main(argv: list[str]) -> int:
    """`tessera bench model NAME ...` or `tessera bench engine ...`."""
    import tessera

    parser = argparse.ArgumentParser(prog="tessera bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    pm = sub.add_parser("model", help="images/s of registry models")
    pm.add_argument("models", nargs="+")
    pm.add_argument("--img-size", type=int, default=None)
    pm.add_argument("--batch-size", type=int, default=32)
    pm.add_argument("--steps", type=int, default=10)
    pm.add_argument("--mode", choices=["infer", "train"], default="infer")
    pm.add_argument("--threads", type=int, default=None)
    pe = sub.add_parser("engine", help="Lightning engine vs a hand-written loop on the same model")
    pe.add_argument("--model", default="swin_tiny_patch4_window7_224")
    pe.add_argument("--model-args", default="{}", help="JSON config overrides, e.g. '{\"img_size\": 112}'")
    pe.add_argument("--batch-size", type=int, default=16)
    pe.add_argument("--steps", type=int, default=20)
    pe.add_argument("--warmup", type=int, default=3)
    pe.add_argument("--repeats", type=int, default=1)
    pe.add_argument("--threads", type=int, default=None)
    pe.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "model":
        print(f"{'model':44s} {'mode':>6s} {'batch':>6s} {'img/s':>9s}  (threads={torch.get_num_threads()})")
        for name in args.models:
            model = tessera.create_model(name, img_size=args.img_size)
            ips = model_throughput(model, args.batch_size, args.steps, args.mode)
            print(f"{name:44s} {args.mode:>6s} {args.batch_size:6d} {ips:9.1f}")
        return 0
    res = engine_overhead(args.model, json.loads(args.model_args), args.batch_size, args.steps, args.warmup, args.repeats)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.model} batch {args.batch_size}, {args.steps} timed steps, threads {torch.get_num_threads()}: "
            f"plain loop {res['plain_img_s']:.2f} img/s, tessera engine {res['engine_img_s']:.2f} img/s, "
            f"overhead {res['overhead_pct']:+.1f}%"
        )
    return 0
