"""`deit-distillation`: DeiT's distillation token helps a student learn from a teacher (note 003).

A Swin teacher is trained first (or taken from `--teacher RUN`); then the same
small DeiT student is trained with the same budget and seeds three ways:
without a distillation token (labels only), with the token and DeiT's hard
objective (half cross-entropy to the labels, half to the teacher's argmax),
and with the token and the soft objective (temperature KL). Test top-1, mean
+- std over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.experiments.common import digits_data, effect, fashion_data, fit_run, fmt, write_results
from tessera.experiments.swin_ablation import BASE as SWIN, QUICK_BASE as QUICK_SWIN, task as swin_task

STUDENT = {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
QUICK_STUDENT = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


def student(kind: str, model_args: dict[str, Any], teacher: Path) -> dict[str, Any]:
    """The `model:` section of one student: plain classification, or distillation from the teacher."""
    common = {"model_args": model_args, "lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.0}
    if kind == "no distillation token":
        return {"class_path": "tessera.train.ClassificationTask",
                "init_args": {"model_name": "deit_tiny_patch16_224", **common}}
    return {"class_path": "tessera.train.DistillationTask",
            "init_args": {"model_name": "deit_tiny_distilled_patch16_224", "teacher_name": "swin_tiny_patch4_window7_224",
                          "teacher_checkpoint": str(teacher), "distillation": kind.split()[-1], **common}}


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int = 3, teacher: str | None = None,
        train_limit: int | None = 20_000) -> dict:
    """Train (or take) the teacher, then each student for `seeds` seeds; write the table."""
    data = digits_data(16) if quick else fashion_data(32, 64, train_limit)
    limit = 3 if quick else None
    epochs = 1 if quick else epochs
    teacher_dir = Path(teacher) if teacher else out / "runs" / "teacher"
    rows: list[dict[str, Any]] = []
    if teacher is not None:
        rows.append({"model": f"teacher {teacher_dir}", "test top-1 (%)": fmt([_test_accuracy(teacher_dir)])})
    else:
        t = fit_run(teacher_dir, swin_task(QUICK_SWIN if quick else SWIN), data,
                    epochs=epochs if quick else 2 * epochs, seed=0, limit_batches=limit)
        rows.append({"model": "Swin teacher", "test top-1 (%)": fmt([t["test/acc1"]])})
    raw = {}
    for kind in ("no distillation token", "distillation token, hard", "distillation token, soft"):
        name = f"{kind.replace(' ', '_').replace(',', '')}"
        # the student without a token never sees the teacher: the same run whatever the teacher, taken
        # from the default folder's table when it is there
        same = out.parent / "deit-distillation" / "runs" if kind == "no distillation token" else None
        accs = [fit_run(out / "runs" / f"{name}_s{seed}", student(kind, QUICK_STUDENT if quick else STUDENT, teacher_dir),
                        data, epochs=epochs, seed=seed, limit_batches=limit,
                        same_as=None if same is None else same / f"{name}_s{seed}")["test/acc1"] for seed in range(seeds)]
        raw[kind] = accs
        rows.append({"model": f"DeiT student, {kind}", "test top-1 (%)": fmt(accs)})
    notes = "Distillation token minus no token: " + ", ".join(
        f"{k.split()[-1]} {effect(v, raw['no distillation token'])}" for k, v in raw.items() if k != "no distillation token")
    return write_results(out, "DeiT distillation (note 003)", ["model", "test top-1 (%)"], rows, {"raw": raw}, notes)


def _test_accuracy(run_dir: Path) -> float:
    """The last test/acc1 a run folder's metrics.csv logged (nan when it has none)."""
    from tessera.experiments.common import last_metrics

    path = run_dir / "metrics.csv"
    return last_metrics(path).get("test/acc1", float("nan")) if path.is_file() else float("nan")


EXPERIMENTS = {"deit-distillation": run}
