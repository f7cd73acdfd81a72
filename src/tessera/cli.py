"""The `tessera` command.

    tessera info [MODEL ...] [--img-size N]   parameters and MACs
    tessera fit | validate | test | predict   training engine (Lightning CLI conventions)
    tessera sample ...                        diffusion sampling to a PNG grid
    tessera bench ...                         speed against the peers

Each subcommand lives in its own module and is imported only when used, so
`tessera info` does not pay for importing Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> "module:function"; the function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "info": "tessera.cli:info_main",
    "fit": "tessera.train.cli:lightning_main",
    "validate": "tessera.train.cli:lightning_main",
    "test": "tessera.train.cli:lightning_main",
    "predict": "tessera.train.cli:predict_main",
    "sample": "tessera.diffusion.sample:sample_main",
    "bench": "tessera.bench:bench_main",
}


def info_main(argv: list[str]) -> int:
    """`tessera info`: parameters (with and without head) and MACs of registry models."""
    import tessera

    parser = argparse.ArgumentParser(prog="tessera info", description=info_main.__doc__)
    parser.add_argument("models", nargs="*", help="model names or patterns (default: all)")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    args = parser.parse_args(argv)
    names: list[str] = []
    for pat in args.models or ["*"]:
        found = tessera.list_models(pat)
        if not found and not any(c in pat for c in "*?["):
            tessera.models.get_builder(pat)  # raises with close matches
        names += [n for n in found if n not in names]
    if not names:
        print(f"no model matches {args.models}", file=sys.stderr)
        return 2
    print(f"{'model':44s} {'input':>11s} {'params':>9s} {'no head':>9s} {'MACs':>9s}")
    for name in names:
        model = tessera.create_model(name, img_size=args.img_size)
        c, h, w = model.input_size
        params, macs = tessera.profile(model, (c, h, w))
        body = model.num_params(exclude_head=True)
        print(f"{name:44s} {f'{c}x{h}x{w}':>11s} {params / 1e6:8.2f}M {body / 1e6:8.2f}M {macs / 1e9:8.2f}G")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tessera` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"tessera: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[command].split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        print(f"tessera {command}: not available in this build ({err})", file=sys.stderr)
        return 2
    if func == "lightning_main":
        rest = [command, *rest]
    try:
        return int(fn(rest) or 0)
    except ValueError as err:  # user-facing errors: one clear line, no traceback
        print(f"tessera {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
