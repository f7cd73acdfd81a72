"""`scaling`: Swin's cost linear in image size, ViT's quadratic (note 004), measured.

Latency (best of a few runs, batch 1, this machine's threads), MACs
(`tessera.profile`, attention matmuls included) and peak activation memory (how
far the resident set rises during one forward, each in a fresh process:
`tessera.experiments.memory`) of Swin-T and ViT-B/16 from 224 to 1120 px; log-log slopes
of each against the pixel count (1: linear, 2: quadratic), and a plot.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from tessera.experiments.common import write_results
from tessera.experiments.memory import child_env

MODELS = {"Swin-T": ("swin_tiny_patch4_window7_224", {}), "ViT-B/16": ("vit_base_patch16_224", {"dynamic_img_size": True})}
QUICK_MODELS = {
    "Swin (tiny)": ("swin_tiny_patch4_window7_224", {"embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4}),
    "ViT (tiny)": ("vit_base_patch16_224", {"embed_dim": 32, "depth": 1, "num_heads": 2, "dynamic_img_size": True}),
}

_CHILD = r"""
import json, sys, time, torch, tessera
from tessera.experiments.memory import peak_rss_growth_mib
name, overrides, size, iters = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = tessera.create_model(name, **overrides).eval()
x = torch.randn(1, 3, size, size)
best = float("inf")
with torch.inference_mode():
    for _ in range(iters):
        start = time.perf_counter(); model(x); best = min(best, time.perf_counter() - start)
    mem = peak_rss_growth_mib(lambda: model(x))  # after the warm-up: one-time library loads are not activations
print(json.dumps({"seconds": best, "mem_mib": mem}))
"""


def measure(name: str, overrides: dict, size: int, iters: int) -> dict:
    """Latency and peak activation memory of one forward at `size` px, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _CHILD, name, json.dumps(overrides), str(size), str(iters)],
                         capture_output=True, text=True, check=True, env=child_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run(out: Path, quick: bool = False, seeds: int = 1, sizes: list[int] | None = None, iters: int = 2) -> dict:
    """Measure every model at every size; write the table, the slopes and scaling.png."""
    import tessera

    models = QUICK_MODELS if quick else MODELS
    sizes = sizes or ([32, 64, 128] if quick else [224, 448, 672, 896, 1120])
    iters = 2 if quick else iters
    rows, series = [], {}
    for label, (name, overrides) in models.items():
        lat, macs, mem = [], [], []
        for size in sizes:
            model = tessera.create_model(name, img_size=size, **overrides)
            _, m = tessera.profile(model, (3, size, size))
            r = measure(name, {**overrides, "img_size": size}, size, iters)
            lat.append(r["seconds"]), macs.append(m), mem.append(max(r["mem_mib"], 1e-3))
            rows.append({"model": label, "size": size, "GMACs": f"{m / 1e9:.3g}", "latency (ms)": f"{1e3 * r['seconds']:.0f}",
                         "peak activation (MiB)": f"{r['mem_mib']:.3g}"})
        pixels = [s * s for s in sizes]
        series[label] = {"sizes": sizes, "latency_s": lat, "macs": macs, "mem_mib": mem,
                         "slope_latency": slope(pixels, lat), "slope_macs": slope(pixels, macs),
                         "slope_macs_last": slope(pixels[-2:], macs[-2:]), "slope_latency_last": slope(pixels[-2:], lat[-2:])}
    _plot(series, out / "scaling.png")
    notes = "Log-log slopes against the pixel count (1 = linear, 2 = quadratic):\n\n" + "\n".join(
        f"- {k}: MACs {v['slope_macs']:.2f} overall, {v['slope_macs_last']:.2f} between the two largest sizes; "
        f"latency {v['slope_latency']:.2f} overall, {v['slope_latency_last']:.2f} for the last step"
        for k, v in series.items())
    return write_results(out, "Cost against image size (note 004: Swin linear, ViT quadratic)",
                         ["model", "size", "GMACs", "latency (ms)", "peak activation (MiB)"], rows,
                         {"series": series, "threads": torch.get_num_threads()}, notes)


def _plot(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for label, s in series.items():
        px = [v * v for v in s["sizes"]]
        for ax, key, title in zip(axes, ("macs", "latency_s", "mem_mib"), ("MACs", "latency (s)", "peak activation (MiB)")):
            ax.loglog(px, s[key], "o-", label=label)
            ax.set_title(title)
            ax.set_xlabel("pixels")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


EXPERIMENTS = {"scaling": run}
