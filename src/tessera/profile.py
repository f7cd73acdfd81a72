"""Parameter and MAC counting, the way the papers count "FLOPs"; where the time goes.

Papers (ViT, DeiT, Swin, Mixer) report multiply-accumulates of the matmuls and
convolutions, attention's Q K^T and A V included, and ignore element-wise
ops. torch's FlopCounterMode counts the same ops (as 2 FLOPs per MAC), except
that it knows no formula for the CPU kernel of scaled_dot_product_attention
and counts it as zero; we register one.
"""

from __future__ import annotations

import time
from typing import Callable

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


# Op-name fragments per category, first match wins (so "scaled_dot_product" is
# attention before "mm" would call it a GEMM). Names are aten / mkldnn / mkl ops.
OP_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "softmax")),
    ("gemm", ("addmm", "bmm", "::mm", "matmul", "linear_pointwise", "mkl_linear", "conv", "::linear")),
    ("norm", ("layer_norm", "group_norm", "batch_norm", "rms_norm")),
    ("activation", ("gelu", "silu", "relu", "sigmoid", "tanh")),
    ("layout", ("copy", "clone", "contiguous", "roll", "cat", "pad", "index", "permute", "transpose", "view",
                "reshape", "unfold", "stack", "slice", "select", "strided", "empty", "narrow", "flatten",
                "squeeze", "expand", "split", "chunk", "_to_", "::to", "fill_", "zero_")),
    ("elementwise", ("add", "mul", "div", "sub", "where", "masked", "mean", "sum", "exp", "neg", "pow",
                     "sqrt", "clamp", "max", "min")),
)
BREAKDOWN_KEYS = tuple(c for c, _ in OP_CATEGORIES) + ("other ops", "python and dispatch")


def op_category(name: str) -> str:
    """The category of a profiler op name ("aten::addmm" -> "gemm"); "other ops" when none matches."""
    lowered = name.lower()
    for category, fragments in OP_CATEGORIES:
        if any(f in lowered for f in fragments):
            return category
    return "other ops"


def time_breakdown(fn: Callable[[], object], iters: int = 3, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of `fn()` by op category, and "total" (wall time under the profiler).

    Each op's *self* CPU time goes to its category (`op_category`), so nested ops
    are not counted twice; what the ops do not account for is Python and dispatch
    overhead. The profiler adds a little overhead of its own, so "total" is a bit
    above an unprofiled call; read the shares, not the absolute times.
    """
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(warmup):
        fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        wall = (time.perf_counter() - start) / iters
    seconds = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    for event in prof.key_averages():
        seconds[op_category(event.key)] += event.self_cpu_time_total / 1e6 / iters
    seconds["python and dispatch"] = max(0.0, wall - sum(seconds.values()))
    return {**seconds, "total": wall}
