"""`tessera fit | validate | test | predict` on Lightning's CLI.

    tessera fit                                   the default recipe (Swin on the bundled digits)
    tessera fit --config configs/digits_swin.yaml --trainer.max_epochs 5
    tessera fit --config RUN/config.yaml --ckpt_path last        resume a killed run
    tessera test --config RUN/config.yaml --ckpt_path last
    tessera predict --checkpoint RUN --images a.png b.png --topk 3 [--json]

Any LightningModule and LightningDataModule can be named by `class_path` in
a YAML config (subclass mode), so diffusion and later tasks train through the
same command. Every run writes into its run folder (`trainer.default_root_dir`):
`checkpoints/last.ckpt` (resumable, written atomically every
`checkpoint.every_n_train_steps` steps and at each validation), `metrics.csv`,
`config.yaml`, `loss.png`, `accuracy.png`, `confusion_matrix.png`, and the
exported weights `model.safetensors` + `config.json` (also `best/`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

log = logging.getLogger(__name__)

# The README's first command: `tessera fit` with no config trains this.
DEFAULT_RECIPE: dict[str, Any] = {
    "seed_everything": 0,
    "trainer": {
        "max_epochs": 80,
        "default_root_dir": "runs/digits_swin",
        "accelerator": "auto",
        "devices": 1,
        "log_every_n_steps": 10,
        "deterministic": True,
    },
    "model": {
        "class_path": "tessera.train.ClassificationTask",
        "init_args": {
            "model_name": "swin_tiny_patch4_window7_224",
            # 32 px digits are 8x8 scans upsampled 4x: a 4x4 patch is one scanned pixel, so
            # patch 4 gives the 8x8 token grid of the data (patch 2 costs 4x for no new detail);
            # window 4 leaves 4 windows (and a real shift) at stage 1, one at stage 2.
            "model_args": {
                "patch_size": 4,
                "window_size": 4,
                "embed_dim": 48,
                "depths": [2, 2],
                "num_heads": [3, 6],
                "drop_path_rate": 0.1,
            },
            "lr": 0.002,
            "weight_decay": 0.05,
            "warmup_fraction": 0.05,
            "label_smoothing": 0.1,
            "ema_decay": 0.99,
        },
    },
    "data": {
        "class_path": "tessera.data.DigitsDataModule",
        "init_args": {"img_size": 32, "in_chans": 1, "batch_size": 32},
    },
    "checkpoint": {"every_n_train_steps": 100},
}

def _import_tasks() -> None:
    """Import every module of `tessera.train` and `tessera.data`, so that configs may name
    any task or DataModule by its short class name; a new task is a new module, no list to edit."""
    import pkgutil

    import tessera.data
    import tessera.train

    for package in (tessera.train, tessera.data):
        for info in pkgutil.iter_modules(package.__path__):
            name = f"{package.__name__}.{info.name}"
            try:
                importlib.import_module(name)
            except ImportError as err:  # an optional dependency of a task family is missing
                log.debug("skipping %s: %s", name, err)


def _has_config(argv: list[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in argv)


def build_cli(argv: list[str], run: bool = True) -> Any:
    """Parse `argv` (subcommand first) and, with `run`, execute it; returns the LightningCLI.

    With `run=False` the model, data and trainer are only built (for tests and notebooks).
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from tessera.train.callbacks import (
        ExportPretrained,
        FastLinearKernels,
        FiniteLossCheck,
        PlotMetrics,
        RestoreLoaderState,
        ResumeSettings,
        StepSeed,
        run_logger,
    )
    from tessera.train.checkpoint_io import AtomicCheckpointIO

    _import_tasks()
    # `tessera` passes the command line as args on purpose; Lightning's own deprecation chatter is not the user's.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if not run and argv and argv[0] in ("fit", "validate", "test"):
        argv = argv[1:]  # without running, LightningCLI takes no subcommand

    class TesseraCLI(LightningCLI):
        """LightningCLI with tessera's run folder, atomic checkpoints and always-on callbacks."""

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.save_last": True,
                    "checkpoint.save_top_k": 0,
                    "checkpoint.every_n_train_steps": 50,
                    "checkpoint.filename": "step{step}",
                }
            )
            parser.add_argument("--test_after_fit", type=bool, default=True, help="run the test split after fit")
            parser.add_argument(
                "--fast_linear", type=Optional[bool], default=None,
                help="fp32 CPU training: each linear GEMM on the faster of oneDNN and MKL, timed per shape "
                     "(same results to rounding; the pick can differ between runs). Unset: on with "
                     "trainer.benchmark (Lightning's switch for kernels chosen by timing), off when "
                     "trainer.deterministic",
            )

        def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
            cfg = self._get(self.config_init, "trainer", default={})
            root = Path(cfg.get("default_root_dir") or "runs/tessera")
            kwargs.setdefault("default_root_dir", str(root))
            if cfg.get("logger") in (None, True):  # one flat run folder: RUN/metrics.csv, RUN/checkpoints/
                kwargs["logger"] = run_logger(root)
            trainer = super().instantiate_trainer(**kwargs)
            from lightning.pytorch.plugins.io import TorchCheckpointIO

            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
                trainer.strategy.checkpoint_io = AtomicCheckpointIO()
            return trainer

        def before_fit(self) -> None:
            if self.fast_linear_wanted():
                self.trainer.callbacks.append(FastLinearKernels())
            ckpt = self._get(self.config_init, "ckpt_path", default=None) if self.subcommand else None
            metrics = Path(self.trainer.default_root_dir) / "metrics.csv"
            if ckpt is None and metrics.is_file() and self.trainer.is_global_zero:
                log.warning("new run in %s: replacing the previous metrics.csv", metrics.parent)
                metrics.unlink()

        def fast_linear_wanted(self) -> bool:
            """`--fast_linear` if given; unset, `trainer.benchmark` (as cuDNN's timed algorithm choice) unless deterministic."""
            asked = self.config.get(str(self.subcommand), self.config).get("fast_linear")
            if asked is not None:
                return bool(asked)
            cfg = self._get(self.config_init, "trainer", default={})
            return bool(cfg.get("benchmark")) and not cfg.get("deterministic")

        def after_fit(self) -> None:
            from lightning.pytorch.utilities.model_helpers import is_overridden

            test = self.config.get(str(self.subcommand), self.config).get("test_after_fit", True)
            if not test or not is_overridden("test_step", self.model) or self.trainer.interrupted:
                return
            has_test = self.datamodule is not None and is_overridden("test_dataloader", self.datamodule)
            if has_test:
                self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)

    return TesseraCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={
            "default_root_dir": "runs/tessera",
            "callbacks": [
                StepSeed(), RestoreLoaderState(), ResumeSettings(), FiniteLossCheck(), ExportPretrained(), PlotMetrics(),
            ],
        },
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        args=argv,
        run=run,
    )


def lightning_main(argv: list[str]) -> int:
    """`tessera fit|validate|test ...`: argv[0] is the subcommand. With no --config, the default recipe."""
    from tessera.train.callbacks import NonFiniteLossError

    argv = list(argv)
    if argv and argv[0] in ("fit", "validate", "test") and not _has_config(argv[1:]) and "-h" not in argv and "--help" not in argv:
        argv = [argv[0], "--config", yaml.safe_dump(DEFAULT_RECIPE, sort_keys=False), *argv[1:]]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build_cli(argv)
    except NonFiniteLossError as err:
        print(f"tessera {argv[0]}: stopped: {err}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------ predict


def load_run(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """The exported model of a run folder (or its `best/`) and its preprocessing info."""
    import tessera
    from tessera.io.checkpoint import read_tessera_config

    folder = Path(folder)
    meta = read_tessera_config(folder)
    if meta is None:
        raise ValueError(
            f"{str(folder)!r} is not an exported tessera run: expected config.json + model.safetensors "
            "(written by `tessera fit` at the end of training)"
        )
    model = tessera.create_model(meta["architecture"], checkpoint=folder).eval()
    pre_path = folder / "preprocess.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    c, h, _ = model.input_size
    pre.setdefault("in_chans", c)
    pre.setdefault("img_size", h)
    pre.setdefault("mean", [0.0] * c)
    pre.setdefault("std", [1.0] * c)
    pre.setdefault("class_names", [])
    return model, pre


def predict_main(argv: list[str]) -> int:
    """`tessera predict --checkpoint RUN --images PATHS... [--topk K] [--json]`: top-k classes per image."""
    import torch

    from tessera.data.datasets import load_image
    from tessera.data.transforms import Normalize, Resize

    parser = argparse.ArgumentParser(prog="tessera predict", description=predict_main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="run folder (or RUN/best) with model.safetensors")
    parser.add_argument("--images", nargs="+", required=True, help="image files (PNG/JPEG/WebP)")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    args = parser.parse_args(argv)
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, pre = load_run(args.checkpoint)
    resize, norm = Resize(int(pre["img_size"])), Normalize(pre["mean"], pre["std"])
    names = pre["class_names"]
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        x = torch.stack([norm(resize(load_image(p, int(pre["in_chans"])))) for p in paths])
        with torch.inference_mode():
            probs = model(x).float().softmax(-1)
        k = min(args.topk, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        for path, p, i in zip(paths, top.values.tolist(), top.indices.tolist()):
            labels = [names[j] if j < len(names) else str(j) for j in i]
            if args.json:
                preds = [{"class": lab, "index": j, "prob": round(q, 6)} for lab, j, q in zip(labels, i, p)]
                print(json.dumps({"image": path, "topk": preds}))
            else:
                print(f"{path}: " + ", ".join(f"{lab} ({q:.1%})" for lab, q in zip(labels, p)))
    return 0
