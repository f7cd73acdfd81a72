"""Per case, the faster of several implementations on this machine: timed once, then kept.

Which kernel wins depends on the CPU (oneDNN vs MKL, AVX2 vs AVX512-BF16 vs
AMX) and on the shape, so rather than a table tuned on one machine the first
call of each case times every candidate on the real operands (after a warm-up,
in turns, best of `repeats`: a busy moment slows all alike) and keeps the
winner for the process. Only used on CPU outside tracing: at inference
(`timing_applies`), and in training for the opt-in `FastLinear` GEMMs and the
low-precision attention kernels; exported graphs always take the plain path.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Hashable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def tracing() -> bool:
    """True under torch.compile or torch.export: no timing, no custom ops in the graph."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def timing_applies(x: Tensor) -> bool:
    """True where a kernel may be chosen by timing: CPU, no autograd, not compiling or exporting."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and not tracing()


def pow2_bucket(n: int) -> int:
    """n rounded up to a power of two: nearby batch sizes share a timing."""
    return 1 << max(0, n - 1).bit_length()


class FastestKernel:
    """The faster of `kernels` (name -> callable) per case key, timed at the case's first call.

    Subclasses give the key of a call; `table` maps key -> (choice, seconds per kernel).
    """

    def __init__(self, kernels: dict[str, Callable[..., Tensor]], repeats: int = 5) -> None:
        self.kernels = kernels
        self.repeats = repeats
        self.table: dict[Hashable, tuple[str, dict[str, float]]] = {}

    def time_kernel(self, name: str, *args) -> float:
        """Seconds of one call of kernel `name`."""
        start = time.perf_counter()
        self.kernels[name](*args)
        return time.perf_counter() - start

    def choose_for(self, key: Hashable, *args) -> str:
        """The kernel for case `key`: from the table, or timed now on `args` and recorded."""
        if key not in self.table:
            for name in self.kernels:  # warm-up: first-call allocations, oneDNN's primitive cache
                self.time_kernel(name, *args)
            times = dict.fromkeys(self.kernels, float("inf"))
            for _ in range(self.repeats):
                for name in self.kernels:
                    times[name] = min(times[name], self.time_kernel(name, *args))
            self.table[key] = (min(times, key=times.get), times)
            log.debug("%s for %s: %s (%s)", type(self).__name__, key, self.table[key][0], times)
        return self.table[key][0]

    def run(self, key: Hashable, *args) -> Tensor:
        """Call the chosen kernel on `args`."""
        return self.kernels[self.choose_for(key, *args)](*args)
