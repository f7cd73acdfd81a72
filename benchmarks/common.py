"""Shared timing helpers for the side-by-side benchmarks (run on demand, never in tests)."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch


def best_time(fn: Callable[[], object], warmup: int = 2, iters: int = 5) -> float:
    """Fastest of `iters` timed calls after `warmup` untimed ones, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_times_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int = 5, budget_s: float = 60.0
) -> dict[str, float]:
    """Fastest call of each function, in seconds, timing them in turns (one call each per round).

    Alternating spreads the noise of a shared machine over every variant
    alike, instead of giving one variant a quiet minute and the next a busy
    one. A function whose calls have used up `budget_s` (bf16 matmuls emulated
    on CPUs without bf16 arithmetic take tens of seconds a call) is timed no
    more after its second call.
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
    return best


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """This machine's measured GEMM throughput (GFLOP/s) for `dtype`, the reference for %peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, warmup=2, iters=5) / 1e9


def autocast_if(enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 CPU autocast when `enabled`, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print dict rows as an aligned text table."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
