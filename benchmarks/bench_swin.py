"""Swin-T inference speed: tessera against Hugging Face transformers, same weights, one run.

    python benchmarks/bench_swin.py                 # fp32 + bf16, batch 8, 224x224
    python benchmarks/bench_swin.py --compile       # + a torch.compile row (minutes to compile)
    python benchmarks/bench_swin.py --sweep         # latency / memory vs resolution, Swin-T and ViT-B/16

Prints img/s, the ratio to the fastest peer, and the fraction of this
machine's measured matmul peak. timm is compared where it imports (it needs
torchvision, which does not load with the CPU torch build used here).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    PeakProbe,
    add_allocator_argument,
    apply_allocator,
    autocast_if,
    best_times_interleaved,
    breakdown_rows,
    matmul_peak_gflops,
    print_table,
)

import tessera  # noqa: E402
from tessera.hardware import cpu_info, onednn_kernels  # noqa: E402
from tessera.inference import kernel_choices, optimize_for_inference  # noqa: E402
from tessera.layers.attention import attention_choices  # noqa: E402
from tessera.models.swin_fast import auto_chunk_tokens  # noqa: E402

SWIN_T = "swin_tiny_patch4_window7_224"


def hf_swin_tiny():
    """transformers' SwinForImageClassification with Swin-T's configuration, random weights."""
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(
        image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
        window_size=7, num_labels=1000,
    )
    return SwinForImageClassification(cfg).eval()


def peers_and_ours(folder: Path, compile: bool) -> dict:
    """{(library, mode): callable(x) -> logits} for every library and precision mode compared.

    tessera's rows: the default eager path (chunks sized from this CPU's cache);
    the same without inference chunking (each stage on the whole batch at once)
    and with the fixed 4,096-token chunks tuned on one CPU before; the plain path without
    any of swin_fast.py's machinery; `optimize_for_inference` (opt-in:
    the faster linear kernel per shape, GELU fused); torch.compile of the
    default model (opt-in, with --compile; its compile time is printed); and
    in bf16 the opt-in "bf16 weights, fp32 matmuls" mode for CPUs without
    bf16 arithmetic, next to the plain bf16 modes that every library has.
    """
    hf = hf_swin_tiny()
    hf.save_pretrained(folder)
    hf_bf16 = hf_swin_tiny()
    hf_bf16.load_state_dict(hf.state_dict())
    hf_bf16 = hf_bf16.to(torch.bfloat16)

    def ours() -> torch.nn.Module:
        return tessera.create_model(SWIN_T, checkpoint=folder).eval()

    plain, plain_bf16 = ours(), ours().to(torch.bfloat16)
    unchunked = ours()
    unchunked.set_inference_chunking(None)
    fixed_chunks = ours()
    fixed_chunks.set_inference_chunking(4096)  # the constant tuned on the AVX2 EPYC, before "auto"
    reference = ours()
    reference.set_fast_path(False)  # the plain modules that read like the notes
    fast = optimize_for_inference(ours())
    fast_bf16 = optimize_for_inference(ours().to(torch.bfloat16), matmul_dtype=torch.float32)
    best_bf16 = optimize_for_inference(ours(), dtype="bf16")  # bf16 GEMMs where the CPU has bf16 arithmetic
    runs = {
        ("transformers", "fp32"): lambda x: hf(pixel_values=x).logits,
        ("tessera", "fp32"): plain,
        ("tessera", "fp32 inference chunking off"): unchunked,
        ("tessera", "fp32 chunks of 4096 tokens (fixed)"): fixed_chunks,
        ("tessera", "fp32 plain path (set_fast_path(False))"): reference,
        ("tessera", "fp32 optimize_for_inference (opt-in)"): fast,
    }
    if compile:
        runs[("tessera", "fp32 torch.compile (opt-in)")] = torch.compile(ours())
    runs.update({
        ("transformers", "bf16 autocast"): lambda x: _autocast(lambda y: hf(pixel_values=y).logits, x),
        ("transformers", "bf16 weights"): lambda x: hf_bf16(pixel_values=x.bfloat16()).logits,
        ("tessera", "bf16 autocast"): lambda x: _autocast(plain, x),
        ("tessera", "bf16 weights"): lambda x: plain_bf16(x.bfloat16()),
        ("tessera", "bf16 weights, fp32 matmuls (opt-in)"): lambda x: fast_bf16(x.bfloat16()),
        ("tessera", "bf16 optimize_for_inference(dtype='bf16')"): lambda x: best_bf16(x.bfloat16()),
    })
    return runs


def _autocast(fn, x):
    with autocast_if(True):
        return fn(x)


def run_speed(batch: int, size: int, rounds: int, compile: bool) -> None:
    """The fp32 / bf16 table: every row timed in turns, best of `rounds`."""
    x = torch.randn(batch, 3, size, size)
    macs = tessera.profile(tessera.create_model(SWIN_T), (3, size, size))[1]
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    peak = peaks["fp32"]
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runs = peers_and_ours(Path(tmp), compile)
        reference = runs[("transformers", "fp32")](x).float()
        outputs, notes = {}, []
        for key, fn in runs.items():
            start = time.perf_counter()
            outputs[key] = fn(x).float()  # the first call also compiles
            if "compile" in key[1]:
                notes.append(f"{key[1]}: first call (compilation) {time.perf_counter() - start:.0f} s")
        probe = PeakProbe(peaks)  # the peak under the same load as the rounds
        best = best_times_interleaved({key: (lambda fn=fn: fn(x)) for key, fn in runs.items()}, rounds=rounds,
                                      between_rounds=probe.round)
        peaks = probe.peaks(peaks)
        peak = peaks["fp32"]
        fastest = {}  # (library, precision) -> its fastest mode: where does its time go?
        for key in sorted(best, key=best.get, reverse=True):
            fastest[(key[0], key[1][:4])] = key
        breakdowns, breakdown_columns = breakdown_rows(
            {f"swin_t / {lib} / {key[1]}": (lambda fn=runs[key]: fn(x)) for (lib, _), key in sorted(fastest.items())},
            macs * batch, peaks)
    rows = []
    for key, out in outputs.items():
        ips = batch / best[key]
        rows.append({
            "library": key[0], "mode": key[1], "img/s": f"{ips:.2f}", "_ips": ips,
            "max|diff| vs fp32 peer": f"{(out - reference).abs().max().item():.1e}",
            "finite": bool(torch.isfinite(out).all()),
            "%GEMM peak": f"{100 * 2 * macs * ips / 1e9 / peaks[key[1][:4]]:.0f}%",
        })
    for precision in ("fp32", "bf16"):
        group = [r for r in rows if r["mode"].startswith(precision)]
        best_peer = max(r["_ips"] for r in group if r["library"] != "tessera")
        for r in group:
            r["ratio vs fastest peer"] = f"{r['_ips'] / best_peer:.2f}x"
    print(f"threads={torch.get_num_threads()} batch={batch} {size}x{size}; measured GEMM peak (GFLOP/s, the row's "
          f"precision) fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f}; Swin-T {macs / 1e9:.2f} GMACs/img; best of {rounds} rounds")
    print(f"GEMM kernels reached: {onednn_kernels()}")
    print(f"inference chunks (tokens, auto from the cache): {auto_chunk_tokens(cpu_info().l3_bytes or cpu_info().l2_bytes)}")
    choices = kernel_choices()
    print("linear kernels chosen by optimize_for_inference: "
          + "; ".join(f"{r['in']}->{r['out']} x{r['rows']} {r['dtype']} {r['activation']}: {r['kernel']} "
                      f"(onednn {r['onednn_us']:.0f} us, aten {r['aten_us']:.0f} us)" for r in choices))
    print("attention kernels chosen by optimize_for_inference: " + "; ".join(
        f"{r['batch_heads']}x{r['queries']}x{r['head_dim']} {r['dtype']}: {r['kernel']} "
        f"(sdpa {r['sdpa_us']:.0f} us, explicit {r['explicit_us']:.0f} us)" for r in attention_choices()))
    columns = ["library", "mode", "img/s", "ratio vs fastest peer", "%GEMM peak", "max|diff| vs fp32 peer", "finite"]
    print_table(rows, columns)
    # Every MAC at the measured GEMM peak: no library can pass this (LayerNorm, softmax, GELU and
    # the copies between the matmuls only add time), so it caps the reachable ratio to a peer.
    ceiling = peak * 1e9 / (2 * macs)
    print(f"ceiling at the fp32 matmul peak: {ceiling:.1f} img/s "
          f"= {ceiling / max(r['_ips'] for r in rows if r['library'] != 'tessera' and r['mode'] == 'fp32'):.2f}x "
          "the fp32 peer")
    for note in notes:
        print(note)
    print_table(breakdowns, breakdown_columns, "share of the profiled time per op category (self CPU time), "
                "each library's fastest mode per precision")


SWEEP_CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, {bench!r})
from common import best_time
import tessera
torch.set_num_threads({threads})
model = tessera.create_model({name!r}, img_size={size}, {extra}).eval()
x = torch.randn(1, 3, {size}, {size})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    seconds = best_time(lambda: model(x), warmup=1, iters={iters})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "mem_mib": (peak - base) / 1024}}))
"""


def run_sweep(sizes: list[int], iters: int) -> None:
    """Latency and activation memory against pixel count; the log-log slope tells linear from quadratic."""
    models = {SWIN_T: "", "vit_base_patch16_224": "dynamic_img_size=True"}
    rows = []
    for name, extra in models.items():
        points = []
        for size in sizes:
            code = SWEEP_CHILD.format(bench=str(Path(__file__).parent), threads=torch.get_num_threads(),
                                      name=name, size=size, extra=extra, iters=iters)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            points.append((size * size, m["seconds"]))
            rows.append({"model": name, "size": size, "latency ms": f"{1e3 * m['seconds']:.0f}",
                         "peak activation MiB": f"{m['mem_mib']:.0f}"})
        xs = [math.log(p) for p, _ in points]
        ys = [math.log(s) for _, s in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
        rows.append({"model": name, "size": "slope", "latency ms": f"{slope:.2f} (log latency / log pixels)"})
        # the slope between the two largest sizes: where ViT's N^2 attention term has caught up
        # with its N-linear MLPs (at N ~ 6 C tokens), it heads for 2; Swin's stays near 1
        (p0, s0), (p1, s1) = points[-2:]
        rows.append({"model": name, "size": "last slope", "latency ms": f"{math.log(s1 / s0) / math.log(p1 / p0):.2f}"})
    print_table(rows, ["model", "size", "latency ms", "peak activation MiB"])


def run_chunks(batch: int, size: int, rounds: int) -> None:
    """Swin-T's default path with each inference grouping: the cache rule, fixed counts, none (best of rounds, in turns)."""
    torch.manual_seed(0)
    model = tessera.create_model(SWIN_T).eval()
    x = torch.randn(batch, 3, size, size)
    auto = auto_chunk_tokens(cpu_info().l3_bytes or cpu_info().l2_bytes)
    variants = {f"auto ({auto} tokens)": "auto", "2,048 tokens": 2048, "8,192 tokens": 8192, "no groups": None}

    def run(chunk):
        def call():
            model.set_inference_chunking(chunk)
            return model(x)
        return call

    with torch.inference_mode():
        best = best_times_interleaved({k: run(v) for k, v in variants.items()}, rounds=rounds)
    rows = [{"grouping": k, "img/s": f"{batch / v:.2f}"} for k, v in best.items()]
    print(f"Swin-T inference, batch {batch}, {size} px, threads {torch.get_num_threads()}, best of {rounds} in turns")
    print_table(rows, ["grouping", "img/s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5, help="timing rounds (speed table) / timed calls (sweep)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (minutes to compile)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sweep", action="store_true", help="resolution sweep instead of the speed table")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 672, 896, 1120])
    parser.add_argument("--chunks", action="store_true", help="inference grouping: the cache rule vs fixed counts vs none")
    add_allocator_argument(parser)
    args = parser.parse_args()
    apply_allocator(args.allocator)
    torch.set_num_threads(args.threads)
    if args.chunks:
        run_chunks(args.batch, args.size, args.iters)
    elif args.sweep:
        run_sweep(args.sizes, args.iters)
    else:
        run_speed(args.batch, args.size, args.iters, args.compile)


if __name__ == "__main__":
    main()
