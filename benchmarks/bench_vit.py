"""Inference speed of tessera's ViT-B/16, DeiT-S and Mixer-B/16 against the peers.

Peers: Hugging Face transformers' ViTForImageClassification and
DeiTForImageClassificationWithTeacher (timm cannot be imported here: it needs
torchvision). Mixer has no transformers implementation, so it is timed alone.

Each pair shares its weights: the transformers model is built with random
weights, saved, and loaded into tessera through `create_model(checkpoint=...)`,
and the outputs are checked to agree before anything is timed. Both run in the
same process with the same thread count and batch, in inference mode, fp32 and
bf16 autocast. Timings alternate between the two models round by round so that
a busy machine slows both alike; the median round is reported.

    python benchmarks/bench_vit.py                      # batch 8, fp32 + bf16
    python benchmarks/bench_vit.py --quick              # a few iterations, smoke test
    python benchmarks/bench_vit.py --models deit_s --dtypes fp32 --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

import tessera  # noqa: E402

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


def build_pair(key: str, folder: Path, device: torch.device) -> tuple[torch.nn.Module, Callable | None]:
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
    return ours, lambda x: hf(pixel_values=x).logits


def autocast(dtype: str, device: torch.device):
    """bf16 autocast context, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round(fn: Callable, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Seconds per batch over `iters` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync(device)
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one line per (model, dtype)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    p.add_argument("--iters", type=int, default=5, help="batches per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="1 round of 1 batch: a smoke test, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.warmup = 1, 1, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)

    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, batch {args.batch}, "
          f"{args.rounds} rounds x {args.iters} batches")
    print(f"{'model':10s} {'dtype':5s} {'tessera img/s':>14s} {'peer img/s':>11s} {'ratio':>6s} {'max|diff|':>10s}")
    ok = True
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            ours, peer = build_pair(key, Path(tmp), device)
            for dtype in args.dtypes:
                runners = {"tessera": ours} if peer is None else {"tessera": ours, "peer": peer}
                with torch.inference_mode(), autocast(dtype, device):
                    diff = float("nan")
                    if peer is not None:
                        a, b = ours(x).float(), peer(x).float()
                        diff = (a - b).abs().max().item()
                        # fp32: same math; bf16: both round, so only a loose bound.
                        limit = 1e-3 if dtype == "fp32" else 0.1 * max(b.abs().max().item(), 1.0)
                        if not diff <= limit:
                            ok = False
                            print(f"  outputs disagree for {key} {dtype}: {diff:.3g} > {limit:.3g}", file=sys.stderr)
                    for fn in runners.values():
                        for _ in range(args.warmup):
                            fn(x)
                    times: dict[str, list[float]] = {k: [] for k in runners}
                    for _ in range(args.rounds):
                        for k, fn in runners.items():
                            times[k].append(time_round(fn, x, args.iters, device))
                ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
                peer_ips = ips.get("peer")
                ratio = f"{ips['tessera'] / peer_ips:6.2f}" if peer_ips else f"{'-':>6s}"
                peer_txt = f"{peer_ips:11.1f}" if peer_ips else f"{'-':>11s}"
                diff_txt = f"{diff:10.2e}" if peer is not None else f"{'-':>10s}"
                print(f"{key:10s} {dtype:5s} {ips['tessera']:14.1f} {peer_txt} {ratio} {diff_txt}", flush=True)
                rows.append({"model": key, "dtype": dtype, "tessera img/s": round(ips["tessera"], 2),
                             "peer img/s": round(peer_ips, 2) if peer_ips else "", "ratio": ratio.strip(),
                             "max|diff|": diff_txt.strip()})
            del ours, peer
    record(rows, ["model", "dtype", "tessera img/s", "peer img/s", "ratio", "max|diff|"],
           f"batch {args.batch}, {args.rounds} rounds x {args.iters} batches, device {device}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
