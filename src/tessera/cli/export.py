"""`tessera export`: a model to ONNX (checked by onnxruntime) or a torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path


def export(argv: list[str]) -> int:
    """export a model to ONNX (checked with onnxruntime) or to a torch.export .pt2 program"""
    import torch

    import tessera
    from tessera.export import export_onnx, export_program

    parser = argparse.ArgumentParser(prog="tessera export", description=export.__doc__)
    parser.add_argument("model", help="a registered name (with --checkpoint for weights)")
    parser.add_argument("--checkpoint", default=None, help="weights: a run folder or any layout create_model reads")
    parser.add_argument("--out", required=True, help="output file: .onnx or .pt2")
    parser.add_argument("--img-size", type=int, default=None, help="example (and, without --dynamic-size, the only) size")
    parser.add_argument("--dynamic-size", action="store_true", help="any height and width (ViT: dynamic_img_size is set; Swin: sides from model.min_dynamic_size())")
    parser.add_argument("--num-classes", type=int, default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix not in (".onnx", ".pt2"):
        raise ValueError(f"--out must end in .onnx or .pt2, got {out.name!r}")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    overrides = {"dynamic_img_size": True} if args.dynamic_size and args.model.startswith(("vit_", "deit_")) else {}
    model = tessera.create_model(args.model, checkpoint=args.checkpoint, num_classes=args.num_classes, **overrides).eval()
    if out.suffix == ".onnx":
        diffs = export_onnx(model, out, args.img_size, args.dynamic_size)
        print(f"wrote {out}; onnxruntime vs eager max |diff|: " + ", ".join(f"{k}: {v:.1e}" for k, v in diffs.items()))
    else:
        torch.export.save(export_program(model, args.img_size, args.dynamic_size), str(out))
        print(f"wrote {out}")
    return 0


COMMANDS = {"export": export}
