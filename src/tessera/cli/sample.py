"""`tessera sample`: draw images from a trained diffusion run."""

from __future__ import annotations


def sample(argv: list[str]) -> int:
    """draw images from a trained diffusion run into a PNG grid"""
    from tessera.diffusion.sample import sample_main

    return sample_main(argv)


COMMANDS = {"sample": sample}
