"""Callbacks every tessera run uses: EMA, per-step seeding, NaN stop, export, plots.

They work for any task module that keeps its network in `self.model`
(classification, distillation, diffusion); a task says what "best" means
with a class attribute `monitor = ("val/acc1", "max")`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from torch import Tensor, nn

from tessera.data.loader import sample_seed
from tessera.train.checkpoint_io import atomic_save

log = logging.getLogger(__name__)


def task_network(pl_module: L.LightningModule) -> nn.Module:
    """The network a task trains: `pl_module.model` when it has one, else the module itself."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else pl_module


def datamodule_of(pl_module: L.LightningModule) -> Any:
    """The DataModule of the trainer a task is attached to (None before fit or without one)."""
    trainer = pl_module._trainer
    return getattr(trainer, "datamodule", None) if trainer is not None else None


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the logger's folder when there is one, else `default_root_dir`."""
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


# --------------------------------------------------------------------------- EMA


class EMAHost:
    """Mixin for tasks with an optional EMA of their weights (`init_ema` in `__init__`).

    Lightning asks for `configure_callbacks` at every fit / validate / test;
    the same `EMA` instance is handed out each time, so that a test after fit
    keeps the average.
    """

    def init_ema(self, decay: float, eval_with_ema: bool = True) -> None:
        """Check the decay (0 turns EMA off) and remember the settings."""
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self._ema_settings = (decay, eval_with_ema)
        self._ema: EMA | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        """[the EMA callback] when the decay is above 0, else []."""
        decay, eval_with_ema = self._ema_settings
        if decay <= 0:
            return []
        if self._ema is None:
            self._ema = EMA(decay, eval_with_ema=eval_with_ema)
        return [self._ema]


def warmup_decay(decay: float, n: int) -> float:
    """The decay of update n (0-based): 0 first, then min(decay, (1 + n) / (10 + n)) (EMAModel's rule)."""
    return 0.0 if n == 0 else min(decay, (1 + n) / (10 + n))


class EMA(L.Callback):
    """Exponential moving average of the weights, one update per optimizer step.

    theta_ema <- d * theta_ema + (1 - d) * theta, with the decay warmed up as
    `tessera.core.ema.EMAModel` does: d_0 = 0 (the first update equals the
    model), then d_n = min(decay, (1 + n) / (10 + n)) after n updates, so that
    short runs are not dominated by the initial weights. Buffers are in the
    average too (float ones averaged, integer ones copied). Under gradient accumulation the
    update follows the optimizer (trainer.global_step), not the micro-batches.
    The average is saved in and restored from Lightning checkpoints; with
    `eval_with_ema` validation, test and export use it.

    Args:
        decay: the final decay d.
        eval_with_ema: swap the EMA weights in for validation, test and export.
    """

    def __init__(self, decay: float = 0.999, eval_with_ema: bool = True) -> None:
        super().__init__()
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.eval_with_ema = decay, eval_with_ema
        self.shadow: dict[str, Tensor] | None = None
        self.updates = 0
        self._last_step = -1
        self._backup: dict[str, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "EMA"

    def _init(self, net: nn.Module) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:  # restored from a checkpoint: follow the model's device
            ref = net.state_dict()
            self.shadow = {k: v.to(ref[k].device) for k, v in self.shadow.items()}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._init(task_network(pl_module))
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._last_step:  # accumulating: no optimizer step yet
            return
        self._last_step = trainer.global_step
        d = warmup_decay(self.decay, self.updates)
        for k, v in task_network(pl_module).state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1 - d)  # s = d * s + (1 - d) * v
            else:
                s.copy_(v)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Temporarily load the EMA weights into the network (re-entrant)."""
        if self.shadow is None or self._backup is not None:
            yield
            return
        net = task_network(pl_module)
        self._backup = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.shadow)
        try:
            yield
        finally:
            net.load_state_dict(self._backup)
            self._backup = None

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.eval_with_ema and self.shadow is not None and self._backup is None:
            self._ctx = self.applied(pl_module)
            self._ctx.__enter__()

    def _swap_out(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            self._ctx = None
            ctx.__exit__(None, None, None)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Saved under its own key (not the callback state) so that validate/test restore it too.
        if self.shadow is not None:
            checkpoint["tessera_ema"] = {
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.items()},
                "updates": self.updates,
                "decay": self.decay,
            }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("tessera_ema")
        if state is None:
            log.warning("the checkpoint holds no EMA weights; the EMA restarts from the current weights")
            return
        self.shadow = dict(state["shadow"])
        self.updates = int(state["updates"])
        if trainer.lightning_module is not None and pl_module is not None:
            self._init(task_network(pl_module))


def ema_callback(trainer: L.Trainer) -> EMA | None:
    """The run's EMA callback, if any."""
    return next((c for c in trainer.callbacks if isinstance(c, EMA)), None)


# ------------------------------------------------------------------ seeding / NaN


class StepSeed(L.Callback):
    """Reseed torch's RNG before every training batch from (seed, rank, epoch, batch).

    Dropout, stochastic depth, mixup and diffusion noise then depend only on
    the position in the run, so a run resumed mid-epoch draws exactly the
    random numbers the uninterrupted run drew. The seed is `seed_everything`'s.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        position = trainer.current_epoch * 1_000_003 + batch_idx
        torch.manual_seed(sample_seed(base, position, -1 - trainer.global_rank))


class RestoreLoaderState(L.Callback):
    """Hand the checkpointed loader state (epoch, batches done) to the training loader on resume.

    Lightning restores it only when it builds the train loader after loading
    the checkpoint; a task whose `configure_optimizers` reads
    `trainer.estimated_stepping_batches` builds it earlier, and the state
    would be dropped (the interrupted epoch would restart). Our loaders start
    iterating lazily, so restoring here, before the first batch, is in time.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.fit_loop
        if loop.restarting and getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()  # private in Lightning 2.x; see the docstring


class ResumeSettings(L.Callback):
    """On resume, apply a changed learning rate or weight decay, and say so.

    Lightning restores the optimizer and schedule from the checkpoint, so a
    resumed run would silently keep the old learning rate. Here a changed
    `lr` rescales every parameter group and the schedule's base rates by
    new / old (the warm-up and cosine shape continue), a changed
    `weight_decay` replaces it in the groups that had decay, and every other
    changed setting of the task is listed in the warning (those take effect as
    the task reads them; a changed batch size is handled by the loader).
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        old = checkpoint.get("hyper_parameters") or {}
        new = dict(getattr(pl_module, "hparams", {}) or {})
        changed = {k: (old[k], new[k]) for k in new if k in old and old[k] != new[k]}
        if not changed:
            return
        groups = [g for opt in checkpoint.get("optimizer_states", []) for g in opt.get("param_groups", [])]
        applied = []
        if "lr" in changed and all(isinstance(v, (int, float)) and v > 0 for v in changed["lr"]):
            factor = changed["lr"][1] / changed["lr"][0]
            for g in groups:
                for key in ("lr", "initial_lr"):
                    if key in g:
                        g[key] *= factor
            for sched in checkpoint.get("lr_schedulers", []):
                for key in ("base_lrs", "_last_lr"):
                    if key in sched:
                        sched[key] = [v * factor for v in sched[key]]
            applied.append("lr")
        if "weight_decay" in changed and isinstance(changed["weight_decay"][1], (int, float)):
            for g in groups:
                if g.get("weight_decay", 0) > 0:
                    g["weight_decay"] = changed["weight_decay"][1]
            applied.append("weight_decay")
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        log.warning(
            "resuming with settings that differ from the checkpoint's (%s); %s to the restored optimizer%s",
            listed,
            " and ".join(applied) + " applied" if applied else "nothing applied",
            "; the others take effect as the task reads them" if set(changed) - set(applied) else "",
        )


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossCheck(L.Callback):
    """Stop the run when the loss or a gradient is NaN or inf, before it reaches the weights or a checkpoint.

    Three guards: the loss before backward; every gradient before the optimizer
    step (a finite loss can still give an infinite gradient; skipped under
    fp16 mixed precision, whose grad scaler skips such steps itself); and the
    weights of every checkpoint before it is written, so that no checkpoint of
    the run ever holds a non-finite value and the one named in the message is good.
    """

    def _stop(self, trainer: L.Trainer, bad: bool, what: str) -> None:
        if trainer.world_size > 1:  # every rank stops together (no rank left waiting in a collective)
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx + 1}); stopped before the optimizer step, {kept}"
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        self._stop(trainer, bad, f"training loss is {loss.detach().float().item()}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if str(trainer.precision).startswith("16"):
            return  # the grad scaler skips non-finite steps and lowers its scale: that is expected there
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        # one reduction and one host sync per step (a sync per parameter would stall a GPU)
        ok = not grads or bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all())
        bad = [] if ok else [n for n, g in grads if not bool(torch.isfinite(g).all())]
        names = f"{bad[:4]}{' ...' if len(bad) > 4 else ''}"
        self._stop(trainer, bool(bad), f"gradient is NaN or inf in {len(bad)} parameter(s) {names}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        bad = [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"weights hold NaN or inf at step {trainer.global_step} in {bad[:4]}{' ...' if len(bad) > 4 else ''}; "
                f"this checkpoint was not written, {kept}"
            )


# -------------------------------------------------------------------------- export


class FastLinearKernels(L.Callback):
    """`tessera fit --fast_linear true`: the model's linear layers train on this CPU's faster GEMM kernels.

    Applied at fit start (the network exists by then) on every rank; see `tessera.layers.fast_linear`.
    Off by default (on with `trainer.benchmark` unless deterministic): the kernels are chosen by
    timing, so two runs may differ at fp32 rounding. The choices travel in the checkpoint, so a
    resumed run computes with the kernels of the run it resumes.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tessera.layers.fast_linear import use_fast_linear

        count = use_fast_linear(pl_module)
        log.info("fast_linear: %d linear layers take the faster of oneDNN and aten per GEMM shape", count)

    def state_dict(self) -> dict[str, Any]:
        """The kernel picked per GEMM case so far (`tessera.layers.fast_linear.kernel_tables`)."""
        from tessera.layers.fast_linear import kernel_tables

        return {"kernels": kernel_tables()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the resumed run's picks: those cases are not timed again."""
        from tessera.layers.fast_linear import restore_kernel_tables

        restore_kernel_tables(state_dict.get("kernels", {}))


def export_network(net: nn.Module, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the network as safetensors + config.json (`save_pretrained`), atomically, plus extra JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(net, "save_pretrained"):
        net.save_pretrained(folder)
    else:
        from safetensors.torch import save_model

        tmp = folder / ".model.safetensors.partial"
        save_model(net, str(tmp))
        os.replace(tmp, folder / "model.safetensors")  # atomic, as save_pretrained
    if extra:
        text = json.dumps(extra, indent=2)
        atomic_save(folder / "preprocess.json", lambda f: f.write(text.encode()))


class ExportPretrained(L.Callback):
    """Export the network (EMA weights when evaluated with them) at the end and whenever it is best.

    Final weights go to the run folder (`RUN/model.safetensors`, `RUN/config.json`,
    `RUN/preprocess.json`), the best by the task's `monitor` to `RUN/best/`.
    Both are loadable with `tessera.create_model(name, checkpoint=folder)`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.best: float | None = None

    @property
    def state_key(self) -> str:
        return "ExportPretrained"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        extra = dm.preprocess() if dm is not None and hasattr(dm, "preprocess") else None
        ema = ema_callback(trainer)
        ctx = ema.applied(pl_module) if ema is not None and ema.eval_with_ema else contextlib.nullcontext()
        with ctx:
            export_network(task_network(pl_module), folder, extra)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if trainer.sanity_checking or monitor is None or monitor[0] not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[monitor[0]])
        better = self.best is None or (value > self.best if monitor[1] == "max" else value < self.best)
        if better and math.isfinite(value):
            self.best = value
            self._export(trainer, pl_module, run_dir(trainer) / "best")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module, run_dir(trainer))
        log.info("exported weights to %s", run_dir(trainer))


# ------------------------------------------------------------------- metrics CSV


def run_logger(root: str | Path, flush_every: int = 50) -> Any:
    """A CSV logger writing `root/metrics.csv` that appends to an existing file instead of deleting it.

    Lightning's CSVLogger removes an existing metrics.csv when it starts, which
    would lose the history of a resumed run (and a `tessera test` on a run
    folder would wipe its training curves). Columns new to the file are merged
    into its header.
    """
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])

    class RunCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return RunCSVLogger(save_dir=str(root), name="", version="", flush_logs_every_n_steps=flush_every)


# --------------------------------------------------------------------------- plots


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Columns of Lightning's metrics.csv as (step, value) series, the last value kept per step."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_curves(metrics: dict[str, list[tuple[int, float]]], keys: list[str], path: Path, title: str) -> bool:
    """One PNG with a line per present metric against the optimizer step; False when none is present."""
    keys = [k for k in keys if metrics.get(k)]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for k in keys:
        steps, values = zip(*metrics[k])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=k)
    ax.set_xlabel("optimizer step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return True


def plot_confusion(confusion: Tensor, class_names: list[str], path: Path) -> None:
    """The test confusion matrix (rows true, columns predicted) as a PNG with counts."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = confusion.shape[0]
    names = class_names if len(class_names) == k else [str(i) for i in range(k)]
    acc = confusion.diag().sum().item() / max(1, confusion.sum().item())
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k), dpi=100)
    ax.imshow(confusion.numpy(), cmap="Blues")
    if k <= 30:
        peak = confusion.max().item()
        for i in range(k):
            for j in range(k):
                c = confusion[i, j].item()
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color="white" if c > peak / 2 else "black")
        ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (accuracy {acc:.2%})")
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


class PlotMetrics(L.Callback):
    """Write `loss.png` and `accuracy.png` after fit and test, and `confusion_matrix.png` after test."""

    def _curves(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        trainer.logger.save()
        path = run_dir(trainer) / "metrics.csv"
        if not path.is_file():
            return
        metrics = read_metrics(path)
        out = run_dir(trainer)
        plot_curves(metrics, ["train/loss", "val/loss"], out / "loss.png", "loss")
        plot_curves(metrics, ["train/acc1", "val/acc1", "val/acc5"], out / "accuracy.png", "accuracy")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Flush metrics.csv with every checkpoint: a resumed run's curves then have no gap.
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.save()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._curves(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._curves(trainer)
        confusion = getattr(pl_module, "test_confusion", None)
        if trainer.is_global_zero and confusion is not None:
            dm = trainer.datamodule
            names = list(getattr(dm, "class_names", []) or [])
            plot_confusion(confusion, names, run_dir(trainer) / "confusion_matrix.png")
