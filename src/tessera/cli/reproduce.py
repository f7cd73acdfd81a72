"""`tessera reproduce NAME`: one of the notes' claims, measured (a table + JSON, a PNG where useful)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path


def reproduce(argv: list[str]) -> int:
    """measure one of the notes' claims: swin-ablation, scaling, deit-distillation, ..."""
    import torch

    from tessera.experiments import experiments

    table = experiments()
    parser = argparse.ArgumentParser(prog="tessera reproduce", description=reproduce.__doc__)
    parser.add_argument("name", choices=sorted(table), help="the experiment")
    parser.add_argument("--out", default=None, help="run folder (default: runs/reproduce/NAME)")
    parser.add_argument("--quick", action="store_true", help="seconds-long version (tiny models and budgets)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the experiment's, 3)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per run, where the experiment trains")
    parser.add_argument("--train-limit", type=int, default=None, help="training images used, where the experiment trains")
    parser.add_argument("--data", default=None, help="dataset, where the experiment offers several (ssl-data-hunger: "
                        "digits or fashion)")
    parser.add_argument("--pretrain-seeds", type=int, default=None,
                        help="pre-training runs per method, where the experiment pre-trains (ssl-data-hunger)")
    parser.add_argument("--teacher", default=None, help="a trained teacher's run folder, where the experiment "
                        "distils (deit-distillation; default: it trains one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.train_limit is not None and args.train_limit < 1:
        raise ValueError(f"--train-limit must be >= 1, got {args.train_limit}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    fn = table[args.name]
    out = Path(args.out or f"runs/reproduce/{args.name}")
    kwargs: dict = {"quick": args.quick}
    accepted = inspect.signature(fn).parameters
    if args.pretrain_seeds is not None and args.pretrain_seeds < 1:
        raise ValueError(f"--pretrain-seeds must be >= 1, got {args.pretrain_seeds}")
    if args.teacher is not None and not Path(args.teacher).is_dir():
        raise ValueError(f"--teacher must be a run folder, {args.teacher!r} is not one")
    for key in ("seeds", "epochs", "train_limit", "data", "pretrain_seeds", "teacher"):
        value = getattr(args, key)
        if value is not None:
            if key not in accepted:
                raise ValueError(f"{args.name} takes no --{key.replace('_', '-')}")
            kwargs[key] = value
    fn(out, **kwargs)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")
    return 0


COMMANDS = {"reproduce": reproduce}
