"""`sampled-global-attention`: the notes' proposal (note 004) against plain Swin, same budget.

Plain Swin, and Swin with the sampled global attention after stage 2 (its tokens
attend to 32 of the 256 stage-1 tokens, random at training and strided at
evaluation) fused by addition, max or concatenation + reprojection; test top-1
(mean +- std over seeds), parameters and MACs of each.
"""

from __future__ import annotations

from pathlib import Path

from tessera.experiments.common import digits_data, effect, fashion_data, fit_run, fmt, write_results
from tessera.experiments.swin_ablation import BASE, QUICK_BASE, task

VARIANTS = {
    "Swin (windows only)": {},
    "+ sampled global, add": {"global_attn": "sampled", "global_tokens": 32, "global_fusion": "add"},
    "+ sampled global, max": {"global_attn": "sampled", "global_tokens": 32, "global_fusion": "max"},
    "+ sampled global, concat": {"global_attn": "sampled", "global_tokens": 32, "global_fusion": "concat"},
}


def run(out: Path, quick: bool = False, seeds: int = 3, epochs: int = 3, train_limit: int | None = 20_000) -> dict:
    """Train each variant for `seeds` seeds; write the table with cost and accuracy."""
    import tessera

    base, data = (QUICK_BASE, digits_data(16)) if quick else (BASE, fashion_data(32, 64, train_limit))
    limit, epochs = (3, 1) if quick else (None, epochs)
    size = 16 if quick else 32
    rows, raw = [], {}
    for label, overrides in VARIANTS.items():
        if quick and overrides:
            overrides = {**overrides, "global_tokens": 4}
        args = {**base, **overrides}
        model = tessera.create_model("swin_tiny_patch4_window7_224", img_size=size, in_chans=1, num_classes=10, **args)
        params, macs = tessera.profile(model, (1, size, size))
        # plain Swin is swin-ablation's "shifted windows" row: taken from there when that run exists
        accs = [fit_run(out / "runs" / f"{label.replace(' ', '_').replace(',', '').replace('+', 'plus')}_s{seed}",
                        task(args), data, epochs=epochs, seed=seed, limit_batches=limit,
                        same_as=None if overrides else out.parent / "swin-ablation" / "runs" / f"shifted_windows_s{seed}"
                        )["test/acc1"]
                for seed in range(seeds)]
        raw[label] = accs
        rows.append({"model": label, "params": f"{params / 1e3:.1f}K", "MACs": f"{macs / 1e6:.1f}M",
                     "test top-1 (%)": fmt(accs)})
    plain = raw["Swin (windows only)"]
    notes = "Against windows only: " + "; ".join(f"{k} {effect(v, plain)}" for k, v in raw.items() if v is not plain)
    return write_results(out, "Sampled global attention (note 004's proposal) vs Swin",
                         ["model", "params", "MACs", "test top-1 (%)"], rows, {"raw": raw}, notes)


EXPERIMENTS = {"sampled-global-attention": run}
