"""Linear probe and fine-tuning of an encoder on labelled tensors: the two supervised read-outs of SSL.

Linear probe: a linear classifier on frozen features (standardised with the
training statistics), AdamW with a cosine schedule, full data each epoch.
Fine-tuning: the encoder plus a fresh linear head on its pooled embedding,
all weights trained (AdamW, warm-up + cosine, optional per-step augmentation).
Both are plain PyTorch loops: small data sets (digits, a label fraction of
Fashion-MNIST) train in seconds without the engine's machinery.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.eval.knn import pooled_features


@dataclass
class ProbeResult:
    """Accuracy on the test set, the trained classifier, and the training loss per epoch."""

    accuracy: float
    classifier: nn.Module
    losses: list[float] = field(default_factory=list)


def _lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Train a linear classifier on frozen features; return its test accuracy.

    Args:
        train_features: (N, D); train_labels: (N,).
        test_features: (M, D); test_labels: (M,).
        epochs: passes over the training features.
        lr: peak AdamW learning rate (cosine to 0).
        weight_decay: AdamW weight decay.
        batch_size: features per step.
        seed: initialisation and order.
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    K = int(max(train_labels.max(), test_labels.max())) + 1
    torch.manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], K)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, total, 0))
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=g)
        running = 0.0
        for idx in order.split(batch_size):
            loss = F.cross_entropy(clf(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        losses.append(running / len(xtr))
    with torch.no_grad():
        acc = float((clf(xte).argmax(1) == test_labels).float().mean())
    return ProbeResult(acc, clf, losses)


class EncoderClassifier(nn.Module):
    """An encoder and a linear head on its pooled embedding (class token, else mean token)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        dim = encoder.feature_info[-1]["num_chs"]
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> logits (B, K)."""
        return self.head(pooled_features(self.encoder, x))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (images -> logits) in eval mode."""
    model.eval()
    hits = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return hits / len(images)


def fine_tune(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    warmup_fraction: float = 0.1,
    label_smoothing: float = 0.1,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    min_steps: int = 0,
    seed: int = 0,
) -> ProbeResult:
    """Fine-tune a copy of `encoder` with a new linear head; return the test accuracy.

    Args:
        encoder: any registered encoder (copied; the original is left as it is).
        train: (images (N, C, H, W), labels (N,)).
        test: (images, labels).
        epochs: passes over `train` (at least `min_steps` optimizer steps are taken:
            a 1% label split would otherwise get a handful of steps).
        lr: peak AdamW learning rate (linear warm-up, cosine to 0).
        weight_decay: AdamW decay on matrices (none on 1-D tensors).
        batch_size: images per step.
        warmup_fraction: share of the steps warming up.
        label_smoothing: of the cross-entropy.
        augment: (images, generator) -> images, applied to each training batch.
        min_steps: lower bound on the number of optimizer steps.
        seed: head initialisation, order and augmentation.
    """
    x, y = train
    K = int(max(y.max(), test[1].max())) + 1
    torch.manual_seed(seed)
    # every weight trains, even when `encoder` comes frozen (an EMA teacher: DINO's features_encoder)
    model = EncoderClassifier(copy.deepcopy(encoder).requires_grad_(True), K)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = math.ceil(len(x) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, total, int(warmup_fraction * total)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        running = 0.0
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            xb = x[idx] if augment is None else augment(x[idx], g)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        losses.append(running / len(x))
    return ProbeResult(accuracy(model, *test), model, losses)


def label_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a class-stratified subset holding `fraction` of the labels (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values
