"""`tessera fit | validate | test | predict`: the training engine (Lightning's CLI conventions)."""

from __future__ import annotations


def _lightning(subcommand: str):
    def run(argv: list[str]) -> int:
        from tessera.train.cli import lightning_main

        return lightning_main([subcommand, *argv])

    run.__doc__ = f"{subcommand} a task from a YAML config (Lightning CLI; `--help` lists every option)"
    return run


def predict(argv: list[str]) -> int:
    """classify images with an exported run (`--checkpoint RUN --images ...`)"""
    from tessera.train.cli import predict_main

    return predict_main(argv)


COMMANDS = {name: _lightning(name) for name in ("fit", "validate", "test")} | {"predict": predict}
