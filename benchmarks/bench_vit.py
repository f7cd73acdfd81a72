"""Inference speed of tessera's ViT-B/16, DeiT-S and Mixer-B/16 against the peers.

Peers: Hugging Face transformers' ViTForImageClassification and
DeiTForImageClassificationWithTeacher (timm cannot be imported here: it needs
torchvision). Mixer has no transformers implementation, so it is timed alone.

Each pair shares its weights: the transformers model is built with random
weights, saved, and loaded into tessera through `create_model(checkpoint=...)`,
and the outputs are checked to agree before anything is timed. Both run in the
same process with the same thread count and batch, in inference mode. Rows per
precision: each library's plain modes (fp32; bf16 autocast and bf16 weights) and
tessera's best mode (`optimize_for_inference`: the faster linear kernel per shape
on this CPU, GELU fused; bf16: bf16 GEMMs where the CPU has bf16 arithmetic).
Each row: img/s, the ratio to the fastest peer mode of that precision, and the
model's MACs per second over this machine's GEMM peak for that precision
(best of three sizes through aten and oneDNN, measured in the same run).
Timings alternate between the modes round by round so that a busy machine
slows all alike; the median round is reported.

    python benchmarks/bench_vit.py                      # batch 8, fp32 + bf16
    python benchmarks/bench_vit.py --quick              # a few iterations, smoke test
    python benchmarks/bench_vit.py --models deit_s --dtypes fp32 --threads 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    MODEL_GEMMS,
    PeakProbe,
    add_allocator_argument,
    apply_allocator,
    breakdown_rows,
    matmul_peak_gflops,
    print_table,
    sync,
)

import tessera  # noqa: E402
from tessera.hardware import onednn_kernels  # noqa: E402
from tessera.inference import kernel_choices, optimize_for_inference  # noqa: E402
from tessera.layers.attention import attention_choices  # noqa: E402

# name -> (tessera model, transformers classes or None, transformers config fields)
PAIRS: dict[str, tuple[str, tuple[str, str] | None, dict]] = {
    "vit_b16": (
        "vit_base_patch16_224",
        ("ViTForImageClassification", "ViTConfig"),
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    ),
    "deit_s": (
        "deit_small_distilled_patch16_224",
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig"),
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    ),
    "mixer_b16": ("mixer_b16_224", None, {}),
}


class Peer(NamedTuple):
    module: torch.nn.Module
    fn: Callable[[torch.Tensor], torch.Tensor]


def build_pair(key: str, folder: Path, device: torch.device) -> tuple[torch.nn.Module, Peer | None]:
    """tessera model and, when there is one, a callable running the peer on the same weights."""
    name, peer, fields = PAIRS[key]
    if peer is None:
        return tessera.create_model(name).to(device).eval(), None
    import transformers

    cls_name, cfg_name = peer
    # LayerNorm eps 1e-6 as in the timm-trained weights (transformers' default 1e-12
    # only shifts outputs by ~1e-4 on random weights; it does not change the cost).
    config = getattr(transformers, cfg_name)(
        image_size=224, patch_size=16, num_labels=1000, layer_norm_eps=1e-6, **fields
    )
    hf = getattr(transformers, cls_name)(config).eval()
    hf.save_pretrained(folder / key)
    ours = tessera.create_model(name, checkpoint=folder / key).to(device).eval()
    hf = hf.to(device)
    return ours, Peer(hf, lambda x: hf(pixel_values=x).logits)


def autocast(dtype: str, device: torch.device):
    """bf16 autocast context, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def time_round(fn: Callable, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Seconds per batch over `iters` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync(device)
    return (time.perf_counter() - t0) / iters


def modes(ours: torch.nn.Module, peer: Callable | None, dtype: str, device: torch.device) -> dict[tuple[str, str], Callable]:
    """{(library, mode): fn(x)} for one precision: each library's plain modes and tessera's best mode.

    fp32: eager, and `optimize_for_inference` (per-shape kernel choice, fused GELU).
    bf16: autocast and bf16 weights (`model.to(torch.bfloat16)`, tessera's default bf16
    mode: its attention takes the faster kernel per shape) for both libraries, and tessera's
    `optimize_for_inference(dtype="bf16")` (bf16 weights; bf16 GEMMs where the CPU has
    bf16 arithmetic, fp32 GEMMs where it does not).
    """
    def under_autocast(fn: Callable) -> Callable:
        return lambda x: _call_autocast(fn, x, device)

    if dtype == "fp32":
        best = optimize_for_inference(copy.deepcopy(ours)) if device.type == "cpu" else ours
        out = {("tessera", "fp32 default"): ours, ("tessera", "fp32 optimize_for_inference"): best}
        if peer is not None:
            out[("transformers", "fp32")] = peer.fn
        return out
    weights = copy.deepcopy(ours).to(torch.bfloat16)
    out = {
        ("tessera", "bf16 autocast"): under_autocast(ours),
        ("tessera", "bf16 weights (default)"): lambda x: weights(x.bfloat16()),
    }
    if device.type == "cpu":
        best = optimize_for_inference(copy.deepcopy(ours), dtype="bf16")
        out[("tessera", "bf16 optimize_for_inference")] = lambda x: best(x.bfloat16())
    if peer is not None:
        out[("transformers", "bf16 autocast")] = under_autocast(peer.fn)
        peer_bf16 = copy.deepcopy(peer.module).to(torch.bfloat16)
        out[("transformers", "bf16 weights")] = lambda x: peer_bf16(pixel_values=x.bfloat16()).logits
    return out


def _call_autocast(fn: Callable, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        return fn(x)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison: one row per (model, precision, library, mode), with %GEMM peak."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    p.add_argument("--iters", type=int, default=3, help="batches per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="1 round of 1 batch: a smoke test, not a measurement")
    add_allocator_argument(p)
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the profile of where each precision's fastest tessera and peer modes spend their time")
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    if args.quick:
        args.rounds, args.iters, args.warmup = 1, 1, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    peaks = {}
    if device.type == "cpu":
        sizes, shapes = ((256,), ()) if args.quick else ((1024, 2048, 3072), MODEL_GEMMS)
        peaks = {d: matmul_peak_gflops(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[d]), sizes, shapes)
                 for d in args.dtypes}
    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, batch {args.batch}, "
          f"{args.rounds} rounds x {args.iters} batches; GEMM peak GFLOP/s "
          + ", ".join(f"{d} {v:.0f}" for d, v in peaks.items()))
    if device.type == "cpu":
        print(f"GEMM kernels reached: {onednn_kernels()}")
    ok = True
    rows: list[dict] = []
    breakdowns: list[dict] = []
    breakdown_columns: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            ours, peer = build_pair(key, Path(tmp), device)
            macs = tessera.profile(ours, (3, 224, 224))[1]
            for dtype in args.dtypes:
                runners = modes(ours, peer, dtype, device)
                with torch.inference_mode():
                    reference = (peer.fn if peer is not None else ours)(x).float()
                    diffs = {k: (fn(x).float() - reference).abs().max().item() for k, fn in runners.items()}
                    # fp32: same math; bf16: every mode rounds, so only a loose bound.
                    limit = 1e-3 if dtype == "fp32" else 0.1 * max(reference.abs().max().item(), 1.0)
                    for k, diff in diffs.items():
                        if not diff <= limit:
                            ok = False
                            print(f"  {key} {k}: outputs disagree with the fp32 reference by {diff:.3g} > {limit:.3g}", file=sys.stderr)
                    for fn in runners.values():
                        for _ in range(args.warmup):
                            fn(x)
                    times: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
                    probe = PeakProbe([dtype] if peaks else [], () if args.quick else MODEL_GEMMS)
                    for _ in range(args.rounds):
                        for k, fn in runners.items():
                            times[k].append(time_round(fn, x, args.iters, device))
                        probe.round()  # the peak under the same load as this model's rounds
                    peaks = probe.peaks(peaks)
                ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
                peer_best = max((v for k, v in ips.items() if k[0] != "tessera"), default=None)
                for k, v in ips.items():
                    rows.append({
                        "model": key, "library": k[0], "mode": k[1], "img/s": round(v, 2),
                        "vs fastest peer": f"{v / peer_best:.2f}x" if peer_best else "-",
                        "%GEMM peak": f"{100 * 2 * macs * v / 1e9 / peaks[dtype]:.0f}%" if peaks else "-",
                        "max|diff|": f"{diffs[k]:.1e}", "_rate": 2 * macs * v / 1e9, "_dtype": dtype,
                    })
                    r = rows[-1]
                    if args.breakdown and device.type == "cpu" and v == max(w for j, w in ips.items() if j[0] == k[0]):
                        with torch.inference_mode():  # each library's fastest mode of this precision
                            found, breakdown_columns = breakdown_rows(
                                {f"{key} / {k[0]} / {k[1]}": lambda fn=runners[k]: fn(x)}, macs * args.batch, peaks, args.iters)
                        breakdowns += found
                    print(f"{key:10s} {k[0]:12s} {k[1]:30s} {v:8.2f} img/s  {r['vs fastest peer']:>6s}  "
                          f"{r['%GEMM peak']:>4s} of peak  diff {r['max|diff|']}", flush=True)
            del ours, peer
    choices = kernel_choices()
    picked = {c: sum(r["kernel"] == c for r in choices) for c in ("onednn", "aten")}
    print(f"linear kernels chosen by optimize_for_inference (per shape, dtype): {picked}")
    attention = {c: sum(r["kernel"] == c for r in attention_choices()) for c in ("sdpa", "explicit")}
    print(f"attention kernels chosen by optimize_for_inference (per shape, dtype): {attention}")
    for r in rows:  # against the final peak: the best rate any probe round saw, for every row alike
        r["%GEMM peak"] = f"{100 * r['_rate'] / peaks[r['_dtype']]:.0f}%" if peaks else "-"
    print_table(rows, ["model", "library", "mode", "img/s", "vs fastest peer", "%GEMM peak", "max|diff|"],
           f"batch {args.batch}, {args.rounds} rounds x {args.iters} batches, device {device}, "
           f"GEMM peak GFLOP/s {peaks}, kernels chosen {picked}, attention kernels {attention}")
    if breakdowns:
        note = "share of the profiled time per op category (self CPU time), each library's fastest mode per precision"
        print_table(breakdowns, breakdown_columns, note)  # also recorded
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
