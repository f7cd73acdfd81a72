"""What the CPU can do, detected once: vector ISA, bf16 arithmetic, AMX, cache sizes.

The inference fast paths choose from this (`tessera.inference.optimize_for_inference`
with `dtype="auto"`), and benchmarks record it next to every figure, so that
a number is never read without the machine it came from. `tune_allocator` keeps
freed memory in the process (glibc), which the `tessera` command applies so that
training steps stop page-faulting their activations afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class CPUInfo:
    """The facts about this CPU that decide a fast path.

    Attributes:
        model: the model name /proc/cpuinfo gives (e.g. 'AMD EPYC').
        flags: the ISA flags that matter here, of those the kernel reports.
        torch_capability: the vector ISA torch's own kernels dispatch to ('AVX512', 'AVX2', ...).
        bf16_arithmetic: native bf16 dot products (AVX512-BF16 or AMX-BF16), so bf16 GEMMs run
            at about twice the fp32 rate instead of being emulated ~10x slower.
        amx: AMX tiles (Intel Sapphire Rapids and later), reached through oneDNN.
        l2_bytes, l3_bytes: per-core L2 and shared L3 (0 when unknown).
        threads: torch's intra-op threads.
        family_model: the vendor's "family F, model M" numbers ("" when unknown): the model name alone
            can be as vague as 'AMD EPYC' (family 25 model 17 is a Zen 4 part, family 26 a Zen 5).
    """

    model: str
    flags: tuple[str, ...]
    torch_capability: str
    bf16_arithmetic: bool
    amx: bool
    l2_bytes: int
    l3_bytes: int
    threads: int
    family_model: str = ""

    def as_dict(self) -> dict:
        """A JSON-ready dict (benchmark records)."""
        return dataclasses.asdict(self)


_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str], str]:
    """(model name, ISA flags, "family F, model M") of the first CPU in /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: fall back to what torch knows
        return platform.processor() or "unknown", set(), ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's lines
    family, number = fields.get("cpu family", ""), fields.get("model", "")
    return (fields.get("model name", "unknown"), set(fields.get("flags", "").split()),
            f"family {family}, model {number}" if family and number else "")


def _cache_bytes(level: int) -> int:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                size = (index / "size").read_text().strip()
                return int(size.rstrip("KMG")) * {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        except (OSError, ValueError):
            continue
    return 0


def cpu_info() -> CPUInfo:
    """This machine's CPU facts, with torch's intra-op threads as they are now."""
    return dataclasses.replace(_cpu_facts(), threads=torch.get_num_threads())


@functools.lru_cache(maxsize=1)
def _cpu_facts() -> CPUInfo:
    """The facts that do not change while the process runs (cached); `threads` is filled by `cpu_info`."""
    model, flags, family_model = _cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    mkldnn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags) if flags else mkldnn_bf16
    return CPUInfo(
        model=model,
        flags=tuple(f for f in _FLAGS if f in flags),
        torch_capability=capability,
        bf16_arithmetic=native_bf16 and mkldnn_bf16,
        amx="amx_tile" in flags,
        l2_bytes=_cache_bytes(2),
        l3_bytes=_cache_bytes(3),
        threads=0,
        family_model=family_model,
    )


_PROBE = """
import torch
a, w = torch.randn(64, 256), torch.randn(128, 256)
with torch.inference_mode():
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), w.to(dtype)
        print("case", dtype, "linear", flush=True)
        torch.ops.mkldnn._linear_pointwise(x, y, None, "none", [], "")
        print("case", dtype, "matmul", flush=True)
        x @ y.t()
"""


@functools.lru_cache(maxsize=1)
def onednn_kernels() -> dict[str, str]:
    """The kernel each GEMM path reaches on this CPU, read from oneDNN's verbose log (cached).

    Keys "fp32 linear" / "bf16 linear" (oneDNN's inner product, `InferenceLinear`) and
    "fp32 matmul" / "bf16 matmul" (aten's `@` / `F.linear`); values are oneDNN's implementation
    names ("brg_matmul:avx512_core_amx" is the AMX kernel) or "not oneDNN (MKL / aten)" when aten
    handled the call itself. Run in a child process: the verbose switch is read once at start-up.
    """
    if not torch.backends.mkldnn.is_available():
        return {}
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120).stdout
    found: dict[str, str] = {}
    case = None
    for line in out.splitlines():
        if line.startswith("case "):
            _, dtype, op = line.split()
            case = f"{'bf16' if 'bfloat16' in dtype else 'fp32'} {op}"
            found[case] = "not oneDNN (MKL / aten)"
        elif case and ",primitive,exec," in line:
            fields = line.split(",")
            found[case] = fields[fields.index("exec") + 3]  # exec, engine, primitive kind, implementation
    return found


# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
# Free memory at the top of the heap kept for the next step instead of handed back to the OS.
_KEPT_TOP_BYTES = 1 << 30
_allocator_tuned = False  # what `tune_allocator` last applied in this process


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (which has `mallopt`), else None (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator(enable: bool = True) -> bool:
    """Keep freed memory in the process for reuse (glibc), or restore glibc's defaults; True if applied.

    By default glibc serves each block above 128 KiB-32 MiB (activations of a
    training step are 10-150 MiB) with a fresh `mmap` and unmaps it on free, so
    every step page-faults all its activations again: on a 2-core EPYC (AVX-512 BF16), a
    Swin-T fp32 step at batch 32 spent 4-7 s of its 11-13 s in the kernel for
    1-1.8 million page faults. Served from the heap and kept there, the same
    step takes 8 s with no faults, for ~10% more peak memory. The setting is
    process-wide (it helps every library in the process), so the `tessera`
    command applies it (`TESSERA_ALLOCATOR=system` opts out) and the library
    never does on import. A no-op returning False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    global _allocator_tuned
    mmap_max, trim = (0, _KEPT_TOP_BYTES) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    applied = bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    _allocator_tuned = enable and applied
    return applied


ALLOCATOR_SETTINGS = ("tuned", "system")


def use_allocator(setting: str) -> bool:
    """Apply an allocator setting by name, "tuned" (`tune_allocator()`) or "system" (left as is); True if tuned."""
    if setting not in ALLOCATOR_SETTINGS:
        raise ValueError(f"the allocator setting must be 'tuned' or 'system', got {setting!r}")
    return setting == "tuned" and tune_allocator()


def allocator_setting() -> str:
    """The allocator setting in effect in this process: 'tuned' (`tune_allocator()`) or 'system' (benchmark records)."""
    return "tuned" if _allocator_tuned else "system"
