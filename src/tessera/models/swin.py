"""Swin Transformer (Liu et al., 2021, arXiv:2103.14030). Filled in by issue 2."""
