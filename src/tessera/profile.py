"""Parameter and MAC counting, the way the papers count "FLOPs".

Papers (ViT, DeiT, Swin, Mixer) report multiply-accumulates of the matmuls and
convolutions, attention's Q K^T and A V included, and ignore element-wise
ops. torch's FlopCounterMode counts the same ops (as 2 FLOPs per MAC), except
that it knows no formula for the CPU kernel of scaled_dot_product_attention
and counts it as zero; we register one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * (B h N M d  for Q K^T  +  B h N M d_v  for A V)."""
    *batch, n, d = query_shape
    m = key_shape[-2]
    dv = value_shape[-1]
    b = 1
    for s in batch:
        b *= s
    return 2 * b * n * m * (d + dv)


_CUSTOM = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `model(*inputs)`."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def profile(model: nn.Module, input_size: tuple[int, int, int] | None = (3, 224, 224)) -> tuple[int, int]:
    """(parameters, MACs) of `model` on one image of `input_size` = (C, H, W).

    With `input_size=None` the model's own `example_inputs(1)` are used: the way
    to profile kinds whose forward takes more than an image (a denoiser's t).
    """
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        if input_size is None:
            inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in model.example_inputs(1))
        else:
            inputs = (torch.zeros(1, *input_size, dtype=dtype),)
        macs = count_macs(model, *inputs)
    finally:
        model.train(was_training)
    return params, macs
