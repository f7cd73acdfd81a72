"""Shared timing helpers for the side-by-side benchmarks (run on demand, never in tests)."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

# Every table a benchmark prints is also appended here as one JSON line, with the machine it
# ran on, so that figures from different CPUs accumulate in the repository (README: Benchmarks).
RESULTS = Path(__file__).with_name("results.jsonl")


def sync(device: torch.device | None) -> None:
    """Wait for the device (CUDA kernels are asynchronous; nothing to wait for on CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], warmup: int = 2, iters: int = 5, device: torch.device | None = None) -> float:
    """Fastest of `iters` timed calls after `warmup` untimed ones, in seconds (synchronising `device`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def best_times_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int = 5, budget_s: float = 60.0,
    between_rounds: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Fastest call of each function, in seconds, timing them in turns (one call each per round).

    Alternating spreads the noise of a shared machine over every variant
    alike, instead of giving one variant a quiet minute and the next a busy
    one. A function whose calls have used up `budget_s` (bf16 matmuls emulated
    on CPUs without bf16 arithmetic take tens of seconds a call) is timed no
    more after its second call. `between_rounds` runs after each round (a `PeakProbe.round`).
    """
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitive caches, lazy initialisation
    best = {name: math.inf for name in fns}
    spent = {name: 0.0 for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            if r >= 2 and spent[name] > budget_s:
                continue
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            best[name], spent[name] = min(best[name], elapsed), spent[name] + elapsed
        if between_rounds is not None:
            between_rounds()
    return best


def fastest_in_turns(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """{name: (fastest of `repeats` calls in seconds, the last output)}, the functions called in turns.

    Each round calls every function once, in reversed order every other round, so a
    host that speeds up or slows down over the run weighs on both libraries alike
    (bench_diffusion timing one library's repeats and then the other's gave DDPM 0.91x and
    DDIM 1.03x in one run, with the same network call in both samplers). No warm-up call:
    for runs of many seconds (a sampler) the caller warms up what needs it.
    """
    best = {name: (float("inf"), None) for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            out = fns[name]()
            best[name] = (min(best[name][0], time.perf_counter() - start), out)
    return best


# (rows, in, out) of the GEMMs transformers spend their time in: a ViT-B / Swin-T MLP at a few
# thousand tokens. On AMX machines these reach 2-3x the rate of square GEMMs (whose operands
# spill the 2 MiB L2), so a peak from square sizes alone would put models above 100%.
MODEL_GEMMS = ((2048, 768, 3072), (2048, 3072, 768), (4096, 384, 1536), (4096, 1536, 384))


def linear_kernels(a: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], object]]:
    """a @ w^T through every kernel a linear layer can reach: aten (MKL where torch has it), and
    oneDNN's inner product on the plain weight and on one reordered once into its blocked layout
    (what `optimize_for_inference` runs)."""
    kernels: dict[str, Callable[[], object]] = {"aten": lambda: torch.nn.functional.linear(a, w)}
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, a.shape[0])
        kernels["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
        kernels["onednn packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    return kernels


def matmul_peak_gflops(
    dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (1024, 2048, 3072),
    shapes: tuple[tuple[int, int, int], ...] = MODEL_GEMMS, iters: int = 5,
) -> float:
    """This machine's GEMM peak (GFLOP/s) for `dtype`, the reference for %peak.

    The best over several square sizes, the transformer-shaped GEMMs `shapes` (rows, in, out)
    and every kernel a linear layer can reach (`linear_kernels`: aten's linear, MKL where torch
    has it, oneDNN's inner product on a plain or a pre-reordered weight, AMX's path for bf16), so
    that a model is never compared with a GEMM slower than the one it could use. Best of `iters`
    calls each: a shared host's noise only ever lowers a rate.
    """
    best = 0.0
    for m, k, n in [(n, n, n) for n in sizes] + list(shapes):
        a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for fn in linear_kernels(a, w).values():
            with torch.inference_mode():
                best = max(best, 2 * m * k * n / best_time(fn, warmup=1, iters=iters) / 1e9)
    return best


class PeakProbe:
    """The GEMM peak re-measured between a benchmark's timed rounds, under the same load as the models.

    On a shared host the machine's rate can swing 2-3x within minutes (measured on a 2-core
    Xeon with AMX), so a peak measured once before the models can sit far above or below
    the rate the models saw. Each `round()` times every transformer-shaped GEMM of
    `shapes` once per precision and kernel; `peaks(floor)` is the best rate seen, never
    below `floor` (the up-front `matmul_peak_gflops`).
    """

    def __init__(self, precisions: Iterable[str], shapes: tuple[tuple[int, int, int], ...] = MODEL_GEMMS) -> None:
        self.cases: dict[str, tuple[str, float, Callable[[], object]]] = {}
        for precision in precisions:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
            for m, k, n in shapes:
                a, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
                for name, fn in linear_kernels(a, w).items():
                    self.cases[f"{precision} {m}x{k}x{n} {name}"] = (precision, 2.0 * m * k * n, fn)
        self.best = dict.fromkeys(self.cases, math.inf)

    def round(self) -> None:
        """Time each GEMM once (call it between the models' rounds)."""
        with torch.inference_mode():
            for label, (_, _, fn) in self.cases.items():
                start = time.perf_counter()
                fn()
                self.best[label] = min(self.best[label], time.perf_counter() - start)

    def peaks(self, floor: dict[str, float]) -> dict[str, float]:
        """GFLOP/s per precision: the best of `floor` and every rate seen in the rounds."""
        out = dict(floor)
        for label, (precision, flop, _) in self.cases.items():
            if math.isfinite(self.best[label]):
                out[precision] = max(out.get(precision, 0.0), flop / self.best[label] / 1e9)
        return out


def autocast_if(enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 CPU autocast when `enabled`, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def print_table(rows: list[dict], columns: list[str], note: str = "") -> None:
    """Print dict rows as an aligned text table and append it to results.jsonl (`record`)."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    record(rows, columns, note)


def machine() -> dict:
    """The CPU (model, ISA flags, bf16 arithmetic, caches), torch version, threads and allocator of this run."""
    from tessera.hardware import allocator_setting, cpu_info, onednn_kernels

    return {**cpu_info().as_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gemm_kernels": onednn_kernels(), "allocator": allocator_setting()}


def add_allocator_argument(parser) -> None:
    """`--allocator system|tuned`: glibc's defaults (what a plain script gets) or the `tessera` command's
    setting (`tessera.hardware.tune_allocator`), for every library in the process alike."""
    from tessera.hardware import ALLOCATOR_SETTINGS

    parser.add_argument("--allocator", choices=sorted(ALLOCATOR_SETTINGS), default="system",
                        help="glibc's defaults (a plain script's) or the tessera command's setting, for every "
                             "library in the process alike")


def apply_allocator(choice: str) -> None:
    """Apply `--allocator` to this process (the setting is recorded with the results)."""
    from tessera.hardware import use_allocator

    use_allocator(choice)


def record(rows: list[dict], columns: list[str], note: str = "") -> None:
    """Append one JSON line {benchmark, argv, date, machine, columns, rows, note} to results.jsonl.

    Set TESSERA_BENCH_RECORD=0 to skip (e.g. exploratory runs under load).
    """
    if os.environ.get("TESSERA_BENCH_RECORD", "1") == "0":
        return
    entry = {
        "benchmark": Path(sys.argv[0]).stem,
        "argv": sys.argv[1:],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "columns": columns,
        "rows": [{c: r.get(c, "") for c in columns} for r in rows],
        "note": note,
    }
    with open(RESULTS, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def breakdown_rows(runs: dict[str, Callable[[], object]], macs: int, peak_gflops: dict[str, float],
                   iters: int = 2) -> tuple[list[dict], list[str]]:
    """Where the time of each run goes (`tessera.profile.time_breakdown`), one row per run, and the columns.

    `macs`: multiply-accumulates of one call (the whole batch). Keys are "model / library / mode" labels whose mode starts with its precision
    ("fp32 ..." / "bf16 ..."). Besides the share of every op category: the
    rate of the GEMM ops alone (the model's MACs, attention's included, over the
    time in GEMM and attention ops), as a fraction of the precision's peak. A
    run whose GEMMs run near the peak loses the rest to the categories listed.
    """
    from tessera.profile import BREAKDOWN_KEYS, time_breakdown

    rows = []
    for label, fn in runs.items():
        parts = time_breakdown(fn, iters=iters)
        total = parts.pop("total")
        precision = label.split(" / ")[-1][:4]
        matmul_time = parts["gemm"] + parts["attention"]
        rows.append({"run": label, "ms/batch (profiled)": f"{1e3 * total:.0f}",
                     **{k: f"{100 * v / total:.0f}%" for k, v in parts.items()},
                     "GEMM+attention ops %peak": f"{100 * 2 * macs / matmul_time / 1e9 / peak_gflops[precision]:.0f}%"})
    return rows, ["run", "ms/batch (profiled)", *BREAKDOWN_KEYS, "GEMM+attention ops %peak"]
