"""Inference speed of tessera's dense heads against transformers' DPT and UperNet, same weights.

Each pair: a transformers model built with random weights (DPT-Base-like ViT
at 384 for depth and segmentation, UperNet on Swin-T at 512 for ADE20K's 150
classes, by default) is saved, loaded into tessera with
`tessera.dense.from_transformers`, the outputs are checked to agree, then
both are timed in turns (`best_times_interleaved`: a busy machine slows both
alike) in inference mode, fp32, same threads and batch.

    python benchmarks/bench_dense.py                 # batch 1, the three pairs
    python benchmarks/bench_dense.py --quick         # small sizes, smoke test
    python benchmarks/bench_dense.py --pairs upernet --size 256 --batch 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_times_interleaved, print_table  # noqa: E402

from tessera.dense import from_transformers  # noqa: E402


def _dpt(seg: bool, quick: bool):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTForSemanticSegmentation

    if quick:
        cfg = DPTConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                        image_size=128, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[24, 48, 96, 96],
                        fusion_hidden_size=64, num_labels=150 if seg else 2)
    else:  # DPT-Base (ViT-B/16 at 384, the paper's hybrid-free base model)
        cfg = DPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=384, backbone_out_indices=[2, 5, 8, 11], neck_hidden_sizes=[96, 192, 384, 768],
                        fusion_hidden_size=256, num_labels=150 if seg else 2)
    return (DPTForSemanticSegmentation if seg else DPTForDepthEstimation)(cfg)


def _upernet(quick: bool):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    if quick:
        bb = SwinConfig(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7,
                        out_features=["stage1", "stage2", "stage3", "stage4"])
        cfg = UperNetConfig(backbone_config=bb, hidden_size=64, auxiliary_channels=32, num_labels=150)
    else:  # Swin-T UperNet for ADE20K (the Swin paper's)
        bb = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                        out_features=["stage1", "stage2", "stage3", "stage4"])
        cfg = UperNetConfig(backbone_config=bb, hidden_size=512, auxiliary_channels=256, num_labels=150)
    return UperNetForSemanticSegmentation(cfg)


PAIRS = {
    "dpt_depth": (lambda q: _dpt(False, q), 384, lambda o: o.predicted_depth[:, None]),
    "dpt_seg": (lambda q: _dpt(True, q), 384, lambda o: o.logits),
    "upernet": (_upernet, 512, lambda o: o.logits),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=0, help="input side (default: the pair's native size)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small models at 128 px, 2 rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.pairs:
        build, native, output = PAIRS[name]
        torch.manual_seed(0)
        hf = build(args.quick).eval()
        size = args.size or (128 if args.quick else native)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = from_transformers(tmp).eval()
        x = torch.randn(args.batch, 3, size, size)
        with torch.inference_mode():
            ref, got = output(hf(pixel_values=x)), ours(x)
            err = float((ref - got).abs().max())
            times = best_times_interleaved(
                {"tessera": lambda: ours(x), "transformers": lambda: hf(pixel_values=x)},
                rounds=2 if args.quick else args.rounds,
            )
        rows.append({
            "pair": name, "size": size, "batch": args.batch, "threads": args.threads,
            "tessera img/s": f"{args.batch / times['tessera']:.2f}",
            "transformers img/s": f"{args.batch / times['transformers']:.2f}",
            "speedup": f"{times['transformers'] / times['tessera']:.2f}x",
            "max |diff|": f"{err:.1e}",
        })
    print_table(rows, ["pair", "size", "batch", "threads", "tessera img/s", "transformers img/s", "speedup",
                       "max |diff|"], note="bench_dense")


if __name__ == "__main__":
    main()
