"""What the experiments share: a training run through `tessera fit`, tables over seeds."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

FINISHED = "finished.json"  # written by fit_run when a run has trained and tested


def fit_run(
    root: Path,
    model: dict[str, Any],
    data: dict[str, Any],
    *,
    epochs: int,
    seed: int,
    limit_batches: int | None = None,
    same_as: Path | None = None,
) -> dict[str, float]:
    """Train and test one configuration with `tessera fit`; its test metrics and wall time.

    A run that finished writes `finished.json` (its config and metrics); calling
    again with the same config returns those without training, so an experiment
    killed half-way resumes at the first unfinished run. A different config in
    the same folder trains again.

    Args:
        root: the run folder (`trainer.default_root_dir`).
        model: the `model:` section of a config (class_path + init_args).
        data: the `data:` section.
        epochs: max_epochs.
        seed: seed_everything (initialisation, data order, augmentation).
        limit_batches: cap on train / val / test batches per epoch (quick runs).
        same_as: another experiment's run folder that may hold this very run (the same
            config in another folder: plain Swin is a row of two tables); its metrics are
            taken when its config equals this one except for the folder.
    """
    from tessera.train.cli import lightning_main

    trainer: dict[str, Any] = {
        "max_epochs": epochs,
        "default_root_dir": str(root),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
        "deterministic": True,
    }
    if limit_batches:
        trainer |= {f"limit_{s}_batches": limit_batches for s in ("train", "val", "test")}
    config = {"seed_everything": seed, "trainer": trainer, "model": model, "data": data,
              "checkpoint": {"every_n_train_steps": 10_000}}
    record = root / FINISHED
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("config") == config:
            return done["metrics"]
    if same_as is not None and (same_as / FINISHED).is_file():
        done = json.loads((same_as / FINISHED).read_text())
        if _without_folder(done.get("config", {})) == _without_folder(config):
            root.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"config": config, "metrics": done["metrics"], "same_as": str(same_as)}, indent=1))
            return done["metrics"]
    start = time.time()
    code = lightning_main(["fit", "--config", yaml.safe_dump(config, sort_keys=False)])
    if code != 0:
        raise RuntimeError(f"training run in {root} failed (exit code {code})")
    metrics = last_metrics(root / "metrics.csv")
    metrics["seconds"] = time.time() - start
    record.write_text(json.dumps({"config": config, "metrics": metrics}, indent=1))
    return metrics


def _without_folder(config: dict[str, Any]) -> dict[str, Any]:
    """A run config without its `trainer.default_root_dir` (for comparing runs kept in different folders)."""
    trainer = {k: v for k, v in config.get("trainer", {}).items() if k != "default_root_dir"}
    return {**config, "trainer": trainer}


def last_metrics(path: Path) -> dict[str, float]:
    """The last logged value of every column of a run's metrics.csv."""
    values: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None) and key != "step":
                    try:
                        values[key] = float(value)
                    except ValueError:
                        pass
    return values


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def effect(a: list[float], b: list[float], scale: float = 100.0) -> str:
    """mean(a) - mean(b) in points with its size against the seeds' noise: "+1.2 points (2.4 s.e.)".

    The standard error of a difference of two means, sqrt(s_a^2 / n_a + s_b^2 / n_b),
    from the sample standard deviations; an effect within 2 s.e. is marked "within noise".
    """
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    diff = scale * (ma - mb)
    se = scale * math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    if se == 0:
        return f"{diff:+.1f} points (1 seed: noise unknown)"
    return f"{diff:+.1f} points ({abs(diff) / se:.1f} s.e.{', within noise' if abs(diff) < 2 * se else ''})"


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean +- std' of a list, scaled (accuracy in %)."""
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def write_results(out: Path, title: str, columns: list[str], rows: list[dict[str, Any]], extra: dict | None = None,
                  notes: str = "") -> dict:
    """Write `results.md` (a table like the notes') and `results.json`; return the JSON object."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    if notes:
        lines += ["", notes]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    result = {"title": title, "columns": columns, "rows": rows, **(extra or {})}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def digits_data(img_size: int = 32, batch_size: int = 32) -> dict[str, Any]:
    """The bundled digits (seconds-fast; the quick form of every experiment)."""
    return {"class_path": "tessera.data.DigitsDataModule",
            "init_args": {"img_size": img_size, "in_chans": 1, "batch_size": batch_size}}


def fashion_data(img_size: int = 32, batch_size: int = 64, train_limit: int | None = None) -> dict[str, Any]:
    """Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist), standardised, with augmentation."""
    return {"class_path": "tessera.data.idx.IDXDataModule",
            "init_args": {"img_size": img_size, "in_chans": 1, "batch_size": batch_size, "train_limit": train_limit,
                          "normalize": "standard",
                          "augment": {"enabled": True, "crop_scale": [0.85, 1.0], "hflip": 0.5, "translate": 2}}}
