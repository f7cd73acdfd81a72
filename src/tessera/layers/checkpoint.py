"""Activation (gradient) checkpointing of one block call."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


def checkpointed(fn: Callable[..., Any], *args: Any, enabled: bool) -> Any:
    """`fn(*args)`, recomputed in backward instead of stored when `enabled` and autograd is on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
