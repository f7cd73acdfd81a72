"""Generative transformers over a tokenizer's codes (notes 003): MaskGIT and next-token, one
model for both objectives, and the multimodal text <-> image sequence layout.

    from tessera.generative import maskgit_sample, generate
    model = tessera.create_model("maskgit_digits", vocab_size=K)          # kind "wrapper": forward -> .loss
    codes = maskgit_sample(model, y=torch.arange(10), steps=8)            # (10, N) codes -> tokenizer.decode
"""

from tessera.generative.multimodal import MultimodalLayout
from tessera.generative.token_transformer import (
    KVCache,
    TokenOutput,
    TokenTransformer,
    TokenTransformerConfig,
    cosine_mask_ratio,
    generate,
    maskgit_mask_counts,
    maskgit_sample,
    random_mask,
    sample_logits,
)

__all__ = [
    "KVCache",
    "MultimodalLayout",
    "TokenOutput",
    "TokenTransformer",
    "TokenTransformerConfig",
    "cosine_mask_ratio",
    "generate",
    "maskgit_mask_counts",
    "maskgit_sample",
    "random_mask",
    "sample_logits",
]
