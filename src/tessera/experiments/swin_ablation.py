"""`swin-ablation`: the notes' (note 004) Swin ablation table, measured on this machine.

Rows as the notes' table (ImageNet-1K top-1 of Swin-T in the paper):
w/o shifting 80.2, shifted windows 81.3; no pos. 80.1, abs. pos. 80.5,
abs.+rel. pos. 81.3, rel. pos. w/o app. 79.3, rel. pos. 81.3. Each variant is
the same small Swin trained the same way (same seeds, data order and
budget) on Fashion-MNIST at 32 px (harder than the digits, where every variant
saturates near 99%), with patch 2 so that stage 1 has 4 x 4 windows of 4 x 4
tokens and the shift matters; `quick` uses the digits and a tiny budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tessera.experiments.common import digits_data, fashion_data, effect, fit_run, fmt, mean_std, write_results

# (row, the notes' top-1, Swin config overrides)
VARIANTS: list[tuple[str, float, dict[str, Any]]] = [
    ("w/o shifting", 80.2, {"shift": False}),
    ("shifted windows", 81.3, {}),
    ("no pos.", 80.1, {"pos_embed": "none"}),
    ("abs. pos.", 80.5, {"pos_embed": "abs"}),
    ("abs.+rel. pos.", 81.3, {"pos_embed": "abs+rel"}),
    ("rel. pos. w/o app.", 79.3, {"appearance": False}),
    ("rel. pos.", 81.3, {}),
]

BASE = {"patch_size": 2, "window_size": 4, "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4],
        "drop_path_rate": 0.1}
QUICK_BASE = {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2]}


def task(model_args: dict[str, Any]) -> dict[str, Any]:
    """The classification task of every variant (the default recipe's optimiser settings)."""
    return {"class_path": "tessera.train.ClassificationTask",
            "init_args": {"model_name": "swin_tiny_patch4_window7_224", "model_args": model_args, "lr": 2e-3,
                          "weight_decay": 0.05, "warmup_fraction": 0.05, "label_smoothing": 0.1}}


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int = 3, train_limit: int | None = 20_000) -> dict:
    """Train every variant for `seeds` seeds; write the table (mean +- std of test top-1)."""
    base, data = (QUICK_BASE, digits_data(16)) if quick else (BASE, fashion_data(32, 64, train_limit))
    epochs, limit = (1, 3) if quick else (epochs, None)
    rows, raw = [], {}
    seen: dict[str, list[float]] = {}
    for row, paper, overrides in VARIANTS:
        key = repr(sorted(overrides.items()))
        if key not in seen:  # "shifted windows" and "rel. pos." are the same model: train it once
            accs = []
            for seed in range(seeds):
                m = fit_run(out / "runs" / f"{row.replace(' ', '_').replace('/', '')}_s{seed}",
                            task({**base, **overrides}), data, epochs=epochs, seed=seed, limit_batches=limit)
                accs.append(m["test/acc1"])
            seen[key] = accs
        accs = seen[key]
        raw[row] = accs
        rows.append({"variant": row, "notes (ImageNet top-1)": paper, "measured top-1 (%)": fmt(accs)})
    mean = {k: mean_std(v)[0] for k, v in raw.items()}
    pairs = {"shifted > w/o shifting": ("shifted windows", "w/o shifting"), "rel. > abs.": ("rel. pos.", "abs. pos."),
             "rel. > no pos.": ("rel. pos.", "no pos."), "rel. > rel. w/o app.": ("rel. pos.", "rel. pos. w/o app.")}
    directions = {k: mean[a] > mean[b] for k, (a, b) in pairs.items()}
    effects = {k: effect(raw[a], raw[b]) for k, (a, b) in pairs.items()}
    data_name = "digits (quick)" if quick else f"Fashion-MNIST 32 px, {train_limit or 55000} training images"
    notes = (f"Data: {data_name}; {epochs} epochs; {seeds} seed(s). Directions reproduced: "
             + ", ".join(f"{k}: {'yes' if v else 'NO'}, {effects[k]}" for k, v in directions.items()))
    return write_results(out, "Swin ablation (note 004's table)", ["variant", "notes (ImageNet top-1)",
                         "measured top-1 (%)"], rows, {"raw": raw, "directions": directions, "effects": effects}, notes)


EXPERIMENTS = {"swin-ablation": run}
