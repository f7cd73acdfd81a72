"""Training-engine overhead: tessera's Lightning engine vs a hand-written PyTorch loop, Swin-T step on CPU.

Both train the same model (same init seed) on the same synthetic batches with
AdamW and a per-step LR schedule; the engine runs as `tessera fit` does
(ClassificationTask, per-step seeding, NaN check, resumable-loader restore),
without checkpoint writes or logging to disk. Target: overhead < 5%.

    python benchmarks/bench_engine.py                       # Swin-T at 224 px, batch 8
    python benchmarks/bench_engine.py --img-size 112 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import json

import torch

from tessera.bench import engine_overhead


def main() -> None:
    """Print plain-loop and engine images/s and the overhead for a Swin-T training step."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="swin_tiny_patch4_window7_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = engine_overhead(args.model, {"img_size": args.img_size}, args.batch_size, args.steps, args.warmup, args.repeats)
    print(json.dumps({**vars(args), "threads": torch.get_num_threads(), **{k: round(v, 3) for k, v in res.items()}}))
    print(
        f"{args.model} @ {args.img_size}px, batch {args.batch_size}: plain {res['plain_img_s']:.2f} img/s, "
        f"engine {res['engine_img_s']:.2f} img/s, overhead {res['overhead_pct']:+.2f}% (target < 5%)"
    )


if __name__ == "__main__":
    main()
