"""Weighted k-NN classification on frozen features (DINO's evaluation protocol).

Wu et al. 2018 / Caron et al. 2021 (arXiv:2104.14294, section 4.1 and their
`eval_knn.py`): features are l2-normalised; a query votes with its k nearest
training features (cosine similarity s_i), each weighted by exp(s_i / T),
k = 20, T = 0.07.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pooled_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """The encoder's image embedding (B, C) through the encoder API: the class token, else the mean token."""
    tokens = encoder.forward_tokens(x)  # (B, prefix + N, C)
    return tokens[:, 0] if encoder.num_prefix_tokens > 0 else tokens.mean(dim=1)


def pixel_features(x: Tensor) -> Tensor:
    """Raw pixels as features: (B, C, H, W) -> (B, C H W) (the k-NN baseline)."""
    return x.flatten(1)


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]] | tuple[Tensor, Tensor],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Features (N, C) and labels (N,) of a data set.

    Args:
        fn: images (B, C, H, W) -> features (B, D); an encoder module means `pooled_features`.
        batches: (images, labels) batches (a DataLoader), or one (images (N, ...), labels (N,)) pair.
        batch_size: chunk size when a single pair is given.
        device: where to run `fn`.
    """
    if isinstance(fn, nn.Module):
        encoder = fn.eval()
        fn = lambda x: pooled_features(encoder, x)  # noqa: E731
    if isinstance(batches, tuple):
        images, labels = batches
        batches = [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    feats, ys = [], []
    for x, y in batches:
        x = x.to(device) if device is not None else x
        feats.append(fn(x).float().cpu())
        ys.append(y.cpu())
    return torch.cat(feats), torch.cat(ys)


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    exclude_self: bool = False,
) -> Tensor:
    """Class votes (Q, K) of each query: sum over its k nearest neighbours of exp(cos / T) one-hot(label).

    Args:
        train_features: (N, D); train_labels: (N,) ints.
        query_features: (Q, D).
        k: neighbours (capped at N).
        T: temperature of the vote weights.
        num_classes: K (default: max label + 1).
        chunk: queries per similarity block (memory).
        exclude_self: the queries are the training features, in order: leave each one out.
    """
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (Q, D) with the same D, got {tuple(train_features.shape)} "
            f"and {tuple(query_features.shape)}"
        )
    if len(train_labels) != len(train_features):
        raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels")
    if k < 1 or T <= 0:
        raise ValueError(f"need k >= 1 and T > 0, got k={k}, T={T}")
    K = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    out = []
    if exclude_self and len(query_features) != len(train_features):
        raise ValueError("exclude_self needs the queries to be the training features")
    k = min(k, len(train_features) - int(exclude_self))
    for start, q in zip(range(0, len(query_features), chunk), F.normalize(query_features.float(), dim=1).split(chunk)):
        sim = q @ train.t()  # (q, N)
        if exclude_self:
            rows = torch.arange(q.shape[0])
            sim[rows, rows + start] = -float("inf")
        sim, idx = sim.topk(k, dim=1)  # (q, k) cosine similarities of the neighbours
        weights = (sim / T).exp()
        votes = torch.zeros(q.shape[0], K).scatter_add_(1, labels[idx], weights)
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    T: float = 0.07,
) -> float:
    """Top-1 accuracy of weighted k-NN (k = 20, T = 0.07 as DINO)."""
    K = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(train_features, train_labels, test_features, k, T, num_classes=K)
    return float((scores.argmax(dim=1) == test_labels.long()).float().mean())


def shift_images(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], padding with edge values.

    The digits' ±4 px robustness test: edge padding keeps the background, whatever the normalisation.
    """
    if max_shift <= 0:
        return x
    m = max_shift
    B, _, H, W = x.shape
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    d = torch.randint(-m, m + 1, (B, 2), generator=generator)
    return torch.stack(
        [padded[i, :, m + dy : m + dy + H, m + dx : m + dx + W] for i, (dy, dx) in enumerate(d.tolist())]
    )
