"""`tessera info`: parameters and MACs of registered models of every kind."""

from __future__ import annotations

import argparse
import sys


def info_main(argv: list[str]) -> int:
    """`tessera info`: parameters (with and without head) and MACs of registry models."""
    import tessera

    parser = argparse.ArgumentParser(prog="tessera info", description=info_main.__doc__)
    parser.add_argument("models", nargs="*", help="model names or patterns (default: all)")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--kind", choices=sorted(tessera.KINDS), default=None, help="only models of this kind")
    args = parser.parse_args(argv)
    names: list[str] = []
    for pat in args.models or ["*"]:
        found = tessera.list_models(pat, kind=args.kind)
        if not found and not any(c in pat for c in "*?["):
            tessera.core.get_builder(pat)  # raises with close matches
        names += [n for n in found if n not in names]
    if not names:
        print(f"no model matches {args.models}", file=sys.stderr)
        return 2
    print(f"{'model':44s} {'kind':>10s} {'input':>11s} {'params':>9s} {'no head':>9s} {'MACs':>9s}")
    for name in names:
        model = tessera.create_model(name, img_size=args.img_size)
        size = tuple(model.input_size)  # (C, H, W) for images, (D,) for points (2-D energy models)
        kind = tessera.model_kinds(name)[0]
        params, macs = tessera.profile(model, size if kind in ("classifier", "encoder", "dense") else None)
        body = model.num_params(exclude_head=True)
        shape = "x".join(map(str, size))
        print(f"{name:44s} {kind:>10s} {shape:>11s} {params / 1e6:8.2f}M {body / 1e6:8.2f}M {macs / 1e9:8.2f}G")
    return 0


COMMANDS = {"info": info_main}
