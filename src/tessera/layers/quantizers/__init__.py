"""Quantizers: an encoder map in, code vectors + indices + losses out (`QuantizerOutput`)."""

from tessera.layers.quantizers.gumbel import GumbelQuantizer
from tessera.layers.quantizers.vq import (
    QuantizerOutput,
    VectorQuantizer,
    check_indices,
    codebook_perplexity,
    kmeans,
)

__all__ = [
    "GumbelQuantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "check_indices",
    "codebook_perplexity",
    "kmeans",
]
