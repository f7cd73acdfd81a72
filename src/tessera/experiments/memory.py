"""Peak resident memory of one call, for the scaling experiment's activation column.

`ru_maxrss` cannot see a forward's activations: building the model already set
the process's high-water mark, and glibc keeps freed blocks for reuse, so the
forward's tensors land in memory the mark had counted. Instead the kernel's
high-water mark (VmHWM) is reset just before the call (`/proc/self/clear_refs`,
Linux >= 4.0) and glibc is told to serve every large block with its own mmap
(`MALLOC_MMAP_THRESHOLD_`, set before the process starts), so that each tensor
is mapped when allocated and unmapped when freed and the mark follows them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MMAP_ENV", "child_env", "peak_rss_growth_mib"]

# Fixed (not adaptive) threshold: blocks over 64 KiB are mmapped and returned on free.
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_rss_growth_mib(fn: Callable[[], Any]) -> float:
    """How far the resident set rose above its level before `fn()` at its peak during the call, in MiB.

    Needs Linux's /proc; call it in a process started with `MMAP_ENV` in its
    environment for large tensors to be counted when reused memory would hide them.
    """
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak memory needs Linux's /proc/self/clear_refs (kernel >= 4.0)")
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
    fn()
    return max(_status_kib("VmHWM") - before, 0) / 1024


def child_env() -> dict[str, str]:
    """This process's environment plus `MMAP_ENV`, for a measuring child process."""
    return {**os.environ, **MMAP_ENV}
