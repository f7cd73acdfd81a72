"""`nn.Linear` whose training GEMMs run on this CPU's faster kernel (oneDNN's or MKL's), chosen per shape.

A linear layer costs three GEMMs a training step: y = x W^T + b (forward),
dx = dy W (the input's gradient) and dW = dy^T x (the weight's). torch runs
all three through aten's addmm / mm (MKL on x86). On the Zen 5 EPYC
(AVX-512, 2 threads) oneDNN's inner product ran the forward 1.0-1.5x and dx
1.1-1.7x faster for the Swin-T and ViT-S/16 shapes of a batch-32 step, and MKL
dW 1.03-4x faster (oneDNN needs both operands transposed for it). Which kernel
wins is the CPU's business, so `FastLinear` times both for the forward and for
dx at the first call of each shape (`FastestKernel`: warm-up, then in turns,
best of three), keeps the faster for the process and always computes dW and db
with aten. `fast_linear_choices()` lists the picks; `kernel_tables()` /
`restore_kernel_tables()` carry them in a training checkpoint, so a resumed run
computes with the kernels of the run it resumes.

It applies to fp32 on the CPU while autograd records, outside autocast (bf16
autocast already reaches oneDNN), torch.compile and torch.export; everything
else is `F.linear`, unchanged. Results agree with `nn.Linear` to fp32 rounding
(~1e-6 relative), not bit for bit, and a kernel chosen by timing can differ
from one process to the next: it is opt-in, `use_fast_linear(model)`, which
turns a model's `nn.Linear` layers into `FastLinear` in place (same objects,
parameters, hooks and state_dict keys). Gradients that the backward pass does
not need (dW when only the input's gradient is asked for, as in Langevin
sampling) are not computed, and double backward (`create_graph=True`) runs
through differentiable aten ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.layers.kernel_choice import FastestKernel, pow2_bucket, tracing


def _onednn_matmul(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x w^T + b through oneDNN's inner product (w: (out, in), dense; reordered by oneDNN at each call)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w, b, "none", [], "")


def _onednn_grad_input(dy: Tensor, w: Tensor) -> Tensor:
    """dx = dy W as oneDNN's inner product with the transposed weight (a copy of W, small next to dy)."""
    return _onednn_matmul(dy, w.t().contiguous(), None)


def _aten_grad_input(dy: Tensor, w: Tensor) -> Tensor:
    """dx = dy W through aten's mm (what autograd runs for `F.linear`)."""
    return dy @ w


def _aten_grad_weight(dy: Tensor, x: Tensor) -> Tensor:
    """dW = dy^T x (out, in) through aten's mm: MKL is faster here than oneDNN, which needs both transposed."""
    return dy.t() @ x


class LinearGemmChoices(FastestKernel):
    """The faster of oneDNN and aten for one of a linear layer's GEMMs, per (rows, in, out, dtype)."""

    def __init__(self, gemm: str, kernels: dict, repeats: int = 3) -> None:
        super().__init__(kernels, repeats)
        self.gemm = gemm

    @staticmethod
    def key(rows: int, w: Tensor) -> tuple:
        """(rows rounded up to a power of two, in, out, dtype): the case a choice is kept for."""
        return (pow2_bucket(rows), w.shape[1], w.shape[0], w.dtype)


FORWARD_CHOICES = LinearGemmChoices("forward", {"onednn": _onednn_matmul, "aten": F.linear})
GRAD_INPUT_CHOICES = LinearGemmChoices("grad_input", {"onednn": _onednn_grad_input, "aten": _aten_grad_input})


def kernel_tables() -> dict[str, list]:
    """The picks so far as plain data, per GEMM: [(rows, in, out, dtype name, kernel, {kernel: seconds})]."""
    return {chooser.gemm: [(*key[:3], str(key[3]).replace("torch.", ""), choice, dict(times))
                           for key, (choice, times) in chooser.table.items()]
            for chooser in (FORWARD_CHOICES, GRAD_INPUT_CHOICES)}


def fast_linear_choices() -> list[dict]:
    """The kernels `FastLinear` chose in this process: one row per (GEMM, shape), with both timings."""
    return [{"gemm": gemm, "rows": rows, "in": n_in, "out": n_out, "dtype": dtype, "kernel": kernel,
             **{f"{n}_us": round(t * 1e6, 1) for n, t in times.items()}}
            for gemm, picks in kernel_tables().items() for rows, n_in, n_out, dtype, kernel, times in picks]


def restore_kernel_tables(tables: dict[str, list]) -> None:
    """Take picks from `kernel_tables()` (a resumed run's): those cases are not timed again."""
    for chooser in (FORWARD_CHOICES, GRAD_INPUT_CHOICES):
        for rows, n_in, n_out, dtype, choice, times in tables.get(chooser.gemm, []):
            if choice in chooser.kernels:
                chooser.table[(rows, n_in, n_out, getattr(torch, dtype))] = (choice, times)


def _gradients_needed(ctx) -> list[bool]:
    """For each input, whether this backward pass will use its gradient (not only whether it requires one).

    `ctx.needs_input_grad` is fixed at forward; `torch.autograd.grad(out, x)` asks for x alone, and the
    engine knows which of the next nodes it will run."""
    if not hasattr(torch._C, "_will_engine_execute_node"):  # private API: without it, all that may be needed
        return list(ctx.needs_input_grad)
    nodes = [node for node, _ in ctx.next_functions]
    nodes += [None] * (len(ctx.needs_input_grad) - len(nodes))  # a None input (no bias) has no edge
    return [wanted and node is not None and _will_run(node) for wanted, node in zip(ctx.needs_input_grad, nodes)]


def _will_run(node) -> bool:
    """Whether the running backward pass executes `node` or captures its gradient."""
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:  # raised for a leaf that `torch.autograd.grad` captures: one of its inputs
        return True


class _FastLinearFunction(torch.autograd.Function):
    """y = x W^T + b with the forward and dx GEMMs on the kernels chosen for this CPU, dW and db by aten."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)  # what aten's addmm keeps too
        rows = x.numel() // x.shape[-1]
        return FORWARD_CHOICES.run(LinearGemmChoices.key(rows, weight), x, weight, bias)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = _gradients_needed(ctx)
        dy_rows = dy.reshape(-1, dy.shape[-1])  # (M, out)
        dx = dw = db = None
        if need_x:
            if torch.is_grad_enabled():  # create_graph: record differentiable ops for double backward
                dx = _aten_grad_input(dy_rows, weight)
            else:
                dx = GRAD_INPUT_CHOICES.run(LinearGemmChoices.key(dy_rows.shape[0], weight), dy_rows, weight)
            dx = dx.view(x.shape)
        if need_w:
            dw = _aten_grad_weight(dy_rows, x.reshape(-1, x.shape[-1]))
        if need_b:  # False without a bias: a None input needs no gradient
            db = dy_rows.sum(0)
        return dx, dw, db


def fast_linear_applies(x: Tensor, weight: Tensor) -> bool:
    """True where `FastLinear` takes the timed kernels: fp32 on CPU, autograd recording, no autocast, not traced.

    An input of the wrong width goes to `F.linear`, which says so (oneDNN would only fail to build its kernel)."""
    return (
        torch.is_grad_enabled()
        and x.shape[-1:] == weight.shape[1:]
        and (x.requires_grad or weight.requires_grad)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not tracing()
        and torch.backends.mkldnn.is_available()
    )


class FastLinear(nn.Linear):
    """`nn.Linear` with its training GEMMs on the faster of oneDNN and aten for this CPU (module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        if fast_linear_applies(x, self.weight):
            return _FastLinearFunction.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_fast_linear(model: nn.Module, enable: bool = True) -> int:
    """Turn every plain `nn.Linear` of `model` into a `FastLinear` in place (`enable=False`: back); returns how many.

    The layers stay the same objects (only their class changes), so parameters, optimizer state,
    hooks, DDP and state_dict keys are untouched. Subclasses of `nn.Linear` are left alone.
    """
    source, target = (nn.Linear, FastLinear) if enable else (FastLinear, nn.Linear)
    changed = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            changed += 1
    return changed
