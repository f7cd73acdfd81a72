"""Optimiser parts every task shares: parameter groups, warm-up + cosine schedule.

Weight decay by tensor rank (ndim <= 1: norms, biases, scales get none), plus
the model's own `no_weight_decay()` names (position tables, class / mask
tokens), never by name substrings (nanoGPT, timm).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names (full paths) that the model and its submodules exempt from weight decay."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        exempt = getattr(module, "no_weight_decay", None)
        if callable(exempt):
            names |= {f"{prefix}.{n}" if prefix else n for n in exempt()}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on tensors with ndim <= 1 or named by `no_weight_decay()`."""
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_fraction: float,
    min_lr_ratio: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on `param_groups(model)` with a per-step warm-up + cosine schedule over `total_steps`."""
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))
    total = max(1, int(total_steps))
    warmup = max(1, int(round(warmup_fraction * total)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, min_lr_ratio))
    return opt, sched
