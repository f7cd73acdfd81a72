"""Training throughput (forward + backward + AdamW step, img/s) of tessera against the peers, one run.

    python benchmarks/bench_train.py                   # Swin-T and ViT-S/16, batch 32, fp32 (+ bf16 autocast where
                                                       # the CPU has bf16 arithmetic)
    python benchmarks/bench_train.py --quick           # small models, a smoke run

The same plain PyTorch loop (AdamW, cross-entropy) drives every model, on the
same random batches. The libraries run in one process, each warmed up, then
their steps alternate (so that a shared machine's noise hits all alike: in
separate processes the same comparison moved by 15% from run to run); the best
and the median step are reported. tessera runs twice in fp32: as built, and with
`use_fast_linear` (its linear layers' forward and input-gradient GEMMs on the
faster of oneDNN and MKL for this CPU, timed per shape in the warm-up). Peers: transformers'
SwinForImageClassification / ViTForImageClassification (always), and timm where
it imports (it needs torchvision; put a timm without its dependencies on
PYTHONPATH to include it). Peak memory is the growth of the process's maximum
resident set across a model's first two steps, in a fresh process per library.
`--allocator tuned` runs every library with the `tessera` command's allocator
setting (`tessera.hardware.tune_allocator`: freed memory is kept and reused
instead of page-faulted again each step); the default is glibc's, what a
plain script gets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_allocator_argument, apply_allocator, print_table  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch
import torch.nn.functional as F
libs, key, batch, steps, dtype, size, warmup = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
from tessera.hardware import use_allocator
use_allocator(sys.argv[8])  # process-wide: "tuned" makes every library in this process reuse freed memory
SPECS = {
  "swin_t": dict(tessera=("swin_tiny_patch4_window7_224", {}), timm="swin_tiny_patch4_window7_224",
                 hf=("SwinForImageClassification", "SwinConfig", dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, patch_size=4))),
  "vit_s16": dict(tessera=("vit_small_patch16_224", {}), timm="vit_small_patch16_224",
                  hf=("ViTForImageClassification", "ViTConfig", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16))),
  "swin_quick": dict(tessera=("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(1, 1), num_heads=(1, 2))), timm=None,
                     hf=("SwinForImageClassification", "SwinConfig", dict(embed_dim=32, depths=[1, 1], num_heads=[1, 2], window_size=7, patch_size=4))),
  "vit_quick": dict(tessera=("vit_small_patch16_224", dict(depth=2)), timm=None,
                    hf=("ViTForImageClassification", "ViTConfig", dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536, patch_size=16))),
}
spec = SPECS[key]
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else (lambda: torch.autocast("cpu", enabled=False))

def build(lib):
    torch.manual_seed(0)
    try:
        if lib.startswith("tessera"):
            import tessera
            name, kw = spec["tessera"]
            model = tessera.create_model(name, img_size=size, num_classes=1000, **kw)
            if lib == "tessera_fast_linear":  # the opt-in per-CPU GEMM kernels of training (fp32)
                from tessera.layers.fast_linear import use_fast_linear
                use_fast_linear(model)
            fwd = model
        elif lib == "timm":
            if spec["timm"] is None:
                return None
            import timm
            model = timm.create_model(spec["timm"], num_classes=1000)
            fwd = model
        else:
            import transformers
            cls, cfg, fields = spec["hf"]
            model = getattr(transformers, cls)(getattr(transformers, cfg)(image_size=size, num_labels=1000, **fields))
            fwd = lambda x: model(pixel_values=x).logits
    except ImportError:
        return None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def step():
        with ctx():
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return step

steppers = {lib: build(lib) for lib in libs}
steppers = {lib: f for lib, f in steppers.items() if f is not None}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for f in steppers.values():
    for _ in range(warmup):  # the first steps run 1.5-2x slower (allocator and page faults settle)
        f()
times = {lib: [] for lib in steppers}
for i in range(steps):  # the libraries' steps alternate, so a shared machine's noise hits all alike
    for lib in (list(steppers) if i % 2 == 0 else list(steppers)[::-1]):
        t = time.perf_counter(); steppers[lib](); times[lib].append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({lib: {"img_s": batch / min(t), "img_s_median": batch / sorted(t)[len(t) // 2],
                        "mem_mib": (peak - base) / 1024} for lib, t in times.items()}))
"""

LIBS = ("tessera", "tessera_fast_linear", "transformers", "timm")


def libraries(dtype: str) -> tuple[str, ...]:
    """The libraries to time: `use_fast_linear` only changes fp32 (bf16 autocast already reaches oneDNN)."""
    return LIBS if dtype == "fp32" else tuple(lib for lib in LIBS if lib != "tessera_fast_linear")


def run(libs: tuple[str, ...], key: str, batch: int, steps: int, dtype: str, size: int, warmup: int,
        allocator: str) -> dict[str, dict]:
    """Step rates (best and median) of `libs` in one fresh process, their steps alternating; missing libraries left out."""
    proc = subprocess.run([sys.executable, "-c", CHILD, ",".join(libs), key, str(batch), str(steps), dtype, str(size),
                           str(warmup), allocator], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{libs} {key} {dtype} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(key: str, batch: int, steps: int, dtype: str, size: int, warmup: int, allocator: str) -> dict[str, dict]:
    """Per library: speed from one process where the libraries alternate steps, memory from a fresh process each."""
    speed = run(libraries(dtype), key, batch, steps, dtype, size, warmup, allocator)
    for lib in speed:  # the growth of a process's peak resident set needs the library alone in it
        speed[lib]["mem_mib"] = run((lib,), key, batch, 1, dtype, size, 1, allocator)[lib]["mem_mib"]
    return speed


def main(argv: list[str] | None = None) -> int:
    from tessera.hardware import cpu_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model, alternating (best and median reported)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (measured: the first 3-4 run slower)")
    add_allocator_argument(p)
    p.add_argument("--quick", action="store_true", help="small models, batch 4, 1 step: a smoke run")
    args = p.parse_args(argv)
    apply_allocator(args.allocator)  # the children apply it for the measurement; here it is recorded
    models = args.models or (["swin_quick", "vit_quick"] if args.quick else ["swin_t", "vit_s16"])
    batch, steps = (4, 1) if args.quick else (args.batch, args.steps)
    warmup = 1 if args.quick else args.warmup
    dtypes = args.dtypes or (["fp32", "bf16"] if cpu_info().bf16_arithmetic else ["fp32"])
    size = 224
    rows = []
    for key in models:
        for dtype in dtypes:
            results = measure(key, batch, steps, dtype, size, warmup, args.allocator)
            peers = {k: v for k, v in results.items() if not k.startswith("tessera")}
            best = max(peers.values(), key=lambda r: r["img_s"]) if peers else None
            for lib, r in results.items():
                rows.append({"model": key, "dtype": dtype, "library": lib, "img/s": f"{r['img_s']:.2f}",
                             "vs fastest peer": f"{r['img_s'] / best['img_s']:.2f}x" if best else "-",
                             "median vs peer": f"{r['img_s_median'] / best['img_s_median']:.2f}x" if best else "-",
                             "peak MiB": f"{r['mem_mib']:.0f}"})
    print(f"# training step (AdamW), batch {batch}, {size} px, {torch.get_num_threads()} threads, {cpu_info().model}, "
          f"{args.allocator} allocator")
    print_table(rows, ["model", "dtype", "library", "img/s", "vs fastest peer", "median vs peer", "peak MiB"],
                f"training, batch {batch}, {warmup} warm-up + {steps} timed steps each, alternating, "
                f"{args.allocator} allocator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
