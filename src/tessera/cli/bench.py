"""`tessera bench`: speed against the peers."""

from __future__ import annotations


def bench(argv: list[str]) -> int:
    """speed of a model or of the training engine against the peers"""
    from tessera.bench import bench_main

    return bench_main(argv)


COMMANDS = {"bench": bench}
