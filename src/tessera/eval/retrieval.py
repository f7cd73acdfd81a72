"""Image-text retrieval and zero-shot classification from joint embeddings (CLIP, CoCa).

Embeddings are unit-norm (B, E); similarity is the dot product (cosine).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def similarity(image_embed: Tensor, text_embed: Tensor) -> Tensor:
    """(N_img, E), (N_txt, E) unit-norm -> cosine similarities (N_img, N_txt)."""
    if image_embed.ndim != 2 or text_embed.ndim != 2 or image_embed.shape[1] != text_embed.shape[1]:
        raise ValueError(
            f"expected embeddings (N_img, E) and (N_txt, E), got {tuple(image_embed.shape)}, {tuple(text_embed.shape)}"
        )
    return image_embed.float() @ text_embed.float().T


def recall_at_k(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries whose target is among their k best-scoring items.

    Args:
        scores: (Q, M) query-item scores.
        targets: (Q,) index of each query's matching item.
    """
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (Q, M) and targets (Q,), got {tuple(scores.shape)}, {tuple(targets.shape)}")
    # Rank of the target = number of items scoring strictly higher (ties count in the query's favour).
    target_score = scores.gather(1, targets[:, None].long())
    rank = (scores > target_score).sum(1)
    return {k: float((rank < k).float().mean()) for k in ks}


def retrieval_recall(
    image_embed: Tensor, text_embed: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways for N paired images and captions (pair i = image i, caption i).

    Returns:
        {'i2t_r1': ..., 'i2t_r5': ..., 't2i_r1': ..., ...}: image -> text (find the caption of
        each image among all captions) and text -> image (the image of each caption).
    """
    if image_embed.shape[0] != text_embed.shape[0]:
        raise ValueError(f"{image_embed.shape[0]} images but {text_embed.shape[0]} captions: retrieval needs pairs")
    sim = similarity(image_embed, text_embed)
    target = torch.arange(sim.shape[0], device=sim.device)
    i2t = recall_at_k(sim, target, ks)
    t2i = recall_at_k(sim.T, target, ks)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def image_to_text(image_embed: Tensor, text_embed: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """The k captions closest to each image: (scores (N_img, k), indices (N_img, k))."""
    sim = similarity(image_embed, text_embed)
    return sim.topk(min(k, sim.shape[1]), dim=1)


def text_to_image(text_embed: Tensor, image_embed: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """The k images closest to each caption: (scores (N_txt, k), indices (N_txt, k))."""
    sim = similarity(image_embed, text_embed).T
    return sim.topk(min(k, sim.shape[1]), dim=1)


def zero_shot_logits(image_embed: Tensor, class_embed: Tensor) -> Tensor:
    """Class scores (N, K) of images against one text embedding per class (its prompt, e.g. "an emoji of Flags").

    `class_embed` may be (K, E) or (K, P, E) (P prompts per class, averaged and renormalised).
    """
    if class_embed.ndim == 3:
        class_embed = torch.nn.functional.normalize(class_embed.mean(1), dim=-1)
    return similarity(image_embed, class_embed)


def zero_shot_accuracy(image_embed: Tensor, class_embed: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of zero-shot classification."""
    return float((zero_shot_logits(image_embed, class_embed).argmax(1) == labels.to(image_embed.device)).float().mean())
