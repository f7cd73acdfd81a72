"""Opt-in inference optimisations for CPU: per-shape fastest linear kernels, fused epilogues, dtype per CPU.

    model = tessera.create_model("swin_tiny_patch4_window7_224", checkpoint=...).eval()
    optimize_for_inference(model)                                  # fp32, same numbers (~1e-6)
    optimize_for_inference(model.to(torch.bfloat16), matmul_dtype=torch.float32)
    optimize_for_inference(model, dtype="auto")                    # bf16 where the CPU has bf16 arithmetic

What it does, in place, keeping every parameter (and so the state_dict):

- every `nn.Linear` becomes an `InferenceLinear`, which runs each GEMM shape
  through whichever kernel is faster on this machine, timed at its first
  call (`KernelChoices`; `kernel_choices()` lists the picks): oneDNN's inner
  product, with the bias added inside the GEMM instead of a separate pass
  over the output (aten's `addmm` first copies the bias into every output
  row), or aten's linear (MKL where torch has it);
- the GELU of each `Mlp` moves into its fc1: a oneDNN post-op, so the hidden
  activations (4C wide, the largest tensor of a block) are written once
  instead of written, read and written again (aten: a separate GELU);
- every attention layer (global, cross and window) runs each shape through the
  faster of torch's fused attention kernel and explicit matmuls + softmax, timed
  at its first call (`attention_choices()` lists the picks): in bf16 on a Zen 5
  the explicit bf16 matmuls beat the fused CPU kernel;
- `matmul_dtype=torch.float32` on a bf16 (or fp16) model: weights and
  activations stay in bf16 (half the memory), every linear layer and window
  attention up-casts its operands and runs its matmuls in fp32, then rounds
  back. This is the mode for CPUs without bf16 arithmetic (AVX2, no
  AVX512-BF16 / AMX), where bf16 matmuls are emulated and about ten times
  slower than fp32 ones. It is asked for explicitly, never inferred from a
  dtype. LayerNorm and the patch-embedding convolution (under 1% of the
  MACs) stay in the model's dtype.

Measured on a 2-core AVX2 AMD EPYC (`benchmarks/bench_swin.py`, Swin-T, batch
8): the fp32 mode is *slower* there than the default eager path (12.5 vs 14.8
img/s), because MKL's GEMMs already run near that CPU's peak and the default
path keeps GELU in place and chunks the batch; it pays on CPUs where oneDNN's
GEMM beats MKL's. The bf16 mode with fp32 matmuls is 5.7x faster than plain
bf16 there (10.9 vs 1.9 img/s).

oneDNN's inner product is a candidate for fp32 (and bf16 on CPUs with bf16
arithmetic) on CPU without autograd only; with autograd (training), under
torch.compile, on other devices, or for other dtypes every module takes the
plain path (`F.linear`, then the activation), so gradients and results
elsewhere are unchanged.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tessera.hardware import cpu_info
from tessera.layers.kernel_choice import FastestKernel, pow2_bucket, timing_applies
from tessera.layers.attention import Attention, CrossAttention
from tessera.layers.fast_linear import FastLinear
from tessera.layers.mlp import Mlp
from tessera.layers.window_attention import WindowAttention

log = logging.getLogger(__name__)

Activation = Literal["none", "gelu"]
ATTENTION_MODULES = (Attention, CrossAttention, WindowAttention)


Kernel = Literal["auto", "onednn", "aten"]


def _onednn_linear(
    x: Tensor, w: Tensor, b: Tensor | None, activation: Activation, packed: Tensor | None = None
) -> Tensor:
    algorithm = "none" if activation == "gelu" else ""  # "none": exact (erf) GELU, not tanh
    return torch.ops.mkldnn._linear_pointwise(x, w if packed is None else packed, b, activation, [], algorithm)


def _aten_linear(
    x: Tensor, w: Tensor, b: Tensor | None, activation: Activation, packed: Tensor | None = None
) -> Tensor:
    y = F.linear(x, w, b)  # MKL / the default BLAS, then the activation as its own pass
    if activation != "gelu":
        return y
    # In place on the fresh output when autograd does not record: a second 4C-wide tensor costs a
    # large allocation (page faults), 12% of DeiT-S fp32 inference on a Xeon with AMX.
    return F.gelu(y) if torch.is_grad_enabled() else torch.ops.aten.gelu_(y)


_KERNELS = {"onednn": _onednn_linear, "aten": _aten_linear}


class KernelChoices(FastestKernel):
    """The faster linear kernel per (shape, dtype, activation) on this machine, timed once and kept.

    oneDNN's fused inner product beats aten's `addmm` + activation on some CPUs
    (AMX, AVX512-BF16, shapes where the fused epilogue saves a pass over the
    output) and loses on others (MKL's fp32 GEMM on an AVX2 EPYC). Row counts
    are bucketed to powers of two.
    """

    def __init__(self, repeats: int = 5) -> None:
        super().__init__(_KERNELS, repeats)

    @staticmethod
    def key(x: Tensor, w: Tensor, activation: Activation) -> tuple:
        """(in, out, rows rounded up to a power of two, dtype, activation): the case a choice is kept for."""
        rows = x.numel() // max(1, x.shape[-1])
        return (w.shape[1], w.shape[0], pow2_bucket(rows), x.dtype, activation)

    def choose(
        self, x: Tensor, w: Tensor, b: Tensor | None, activation: Activation, packed: Tensor | None = None
    ) -> str:
        """The kernel for this case: from the table, or timed now (oneDNN on `packed`, if given) and recorded."""
        return self.choose_for(self.key(x, w, activation), x, w, b, activation, packed)

    def chosen(self, x: Tensor, w: Tensor, activation: Activation) -> str | None:
        """The kernel already chosen for this case, None if it has not been timed."""
        entry = self.table.get(self.key(x, w, activation))
        return None if entry is None else entry[0]

    def summary(self) -> list[dict]:
        """One row per timed case: shape, dtype, activation, the choice and both times (microseconds)."""
        return [
            {"in": k[0], "out": k[1], "rows": k[2], "dtype": str(k[3]).replace("torch.", ""), "activation": k[4],
             "kernel": choice, **{f"{n}_us": round(t * 1e6, 1) for n, t in times.items()}}
            for k, (choice, times) in self.table.items()
        ]


KERNEL_CHOICES = KernelChoices()


def kernel_choices() -> list[dict]:
    """The linear kernels `InferenceLinear(kernel="auto")` chose in this process, one row per case."""
    return KERNEL_CHOICES.summary()


class InferenceLinear(nn.Module):
    """y = act(x W^T + b) through the faster of oneDNN and aten without autograd, `F.linear` + act with it.

    Args:
        linear: the layer to replace; its weight and bias are shared, not copied.
        activation: epilogue ("gelu": exact, erf-based GELU); fused into the GEMM by oneDNN.
        matmul_dtype: dtype of the GEMM (None: the input's); the output is cast back.
        kernel: "auto" (the default): per shape and dtype, whichever of oneDNN's fused inner
            product and aten's linear + activation is faster on this machine (`KernelChoices`);
            "onednn" or "aten" to force one. Autograd, other devices and dtypes oneDNN cannot
            run fast here always take aten.

    oneDNN runs on a copy of the weight reordered once into its blocked layout (in
    `matmul_dtype`), made at the first call and remade when the weight changes (its
    storage or version): 5-15% faster GEMMs than reordering at every call. The copy
    is dropped when aten is chosen and is not part of the state_dict, a deepcopy or a pickle.
    """

    def __init__(
        self, linear: nn.Linear, activation: Activation = "none", matmul_dtype: torch.dtype | None = None,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if kernel not in ("auto", "onednn", "aten"):
            raise ValueError(f"kernel must be 'auto', 'onednn' or 'aten', got {kernel!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.activation = activation
        self.matmul_dtype = matmul_dtype
        self.kernel = kernel
        self._packed: tuple[tuple, Tensor] | None = None  # (the weight's stamp, its oneDNN layout)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        dtype = x.dtype
        b = self.bias
        if self.matmul_dtype is not None:  # the explicit fp32-matmul mode of low-precision models
            x, b = x.to(self.matmul_dtype), None if b is None else b.to(self.matmul_dtype)
        # autograd, other devices and dtypes, tracing; and an input of the wrong width or dtype, for torch's
        # own error (oneDNN would only say it cannot build its kernel)
        if self.kernel == "aten" or not _onednn_applies(x) or not self.fits(x):
            return _aten_linear(x, self.matmul_weight(), b, self.activation).to(dtype)
        rows = x.numel() // x.shape[-1]
        kernel = self.kernel
        if kernel == "auto":  # the packed weight is made for the timing only when the case is new
            kernel = KERNEL_CHOICES.chosen(x, self.weight, self.activation) or KERNEL_CHOICES.choose(
                x, self.matmul_weight(), b, self.activation, self.packed_weight(rows))
        if kernel == "aten":
            self._packed = None  # the reordered copy is only worth its memory where oneDNN runs
            return _aten_linear(x, self.matmul_weight(), b, self.activation).to(dtype)
        # oneDNN reads the packed copy (already in the matmul dtype): the dense weight is not converted per call
        return _onednn_linear(x, self.weight, b, self.activation, self.packed_weight(rows)).to(dtype)

    def fits(self, x: Tensor) -> bool:
        """Whether x (already in the matmul dtype) has the weight's width and dtype."""
        return x.shape[-1:] == self.weight.shape[1:] and (self.matmul_dtype is not None or x.dtype == self.weight.dtype)

    def matmul_weight(self) -> Tensor:
        """The dense weight in the matmul dtype (converted at each call in the fp32-matmul mode)."""
        return self.weight if self.matmul_dtype is None else self.weight.to(self.matmul_dtype)

    def packed_weight(self, rows: int) -> Tensor:
        """The weight (in the matmul dtype) in oneDNN's blocked layout for `rows`-row inputs, cached."""
        w = self.weight
        version = 0 if w.is_inference() else w._version  # inference tensors keep no version counter
        stamp = (w.data_ptr(), version, w.dtype, tuple(w.shape), self.matmul_dtype)
        if self._packed is None or self._packed[0] != stamp:
            self._packed = (stamp, torch.ops.mkldnn._reorder_linear_weight(self.matmul_weight().detach(), max(1, rows)))
        return self._packed[1]

    def __getstate__(self) -> dict:
        """The module's state without the packed weight (an opaque oneDNN tensor cannot be copied)."""
        return {**super().__getstate__(), "_packed": None}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activation={self.activation}, matmul_dtype={self.matmul_dtype}, kernel={self.kernel}"
        )


def _onednn_applies(x: Tensor) -> bool:
    """oneDNN's fused inner product: on CPU without autograd (it has no backward), for fp32, and for
    bf16 where the CPU has bf16 arithmetic (AVX512-BF16 / AMX; elsewhere `matmul_dtype` avoids it)."""
    if not timing_applies(x) or not torch.backends.mkldnn.is_available():  # traced: no custom op in the graph
        return False
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and cpu_info().bf16_arithmetic)


InferenceDType = Literal["auto", "fp32", "bf16"]


def choose_inference_dtype(dtype: InferenceDType = "auto") -> tuple[torch.dtype, torch.dtype | None, str]:
    """(storage dtype, matmul dtype or None, why) for `dtype` on this CPU.

    "auto": bf16 weights and bf16 matmuls where the CPU has bf16 arithmetic
    (AVX512-BF16 or AMX: about 2-5x the fp32 GEMM rate), fp32 elsewhere (bf16
    would be emulated). "bf16" on a CPU without bf16 arithmetic keeps bf16
    storage but runs the matmuls in fp32 (the `matmul_dtype` mode).
    """
    info = cpu_info()
    if dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"dtype must be 'auto', 'fp32' or 'bf16', got {dtype!r}")
    if dtype == "fp32" or (dtype == "auto" and not info.bf16_arithmetic):
        why = "fp32 asked for" if dtype == "fp32" else f"fp32: {info.model} has no native bfloat16 dot products"
        return torch.float32, None, why
    if info.bf16_arithmetic:
        isa = "AMX" if info.amx else "AVX512-BF16"
        return torch.bfloat16, None, f"bf16 weights and matmuls: {info.model} has {isa}"
    return torch.bfloat16, torch.float32, f"bf16 weights, fp32 matmuls: {info.model} has no native bfloat16 dot products"


def optimize_for_inference(
    model: nn.Module, matmul_dtype: torch.dtype | None = None, dtype: InferenceDType | None = None,
    kernel: Kernel = "auto",
) -> nn.Module:
    """Swap in `InferenceLinear`s (GELU fused into each Mlp's fc1) in place and return the model.

    Args:
        model: any tessera model; parameters are shared, so its state_dict and
            `load_state_dict` keep working (same keys).
        matmul_dtype: None: matmuls in the model's dtype. torch.float32 on a
            bf16 / fp16 model: low-precision storage, fp32 matmuls (linear
            layers and window attention), see the module docstring.
        dtype: "auto" chooses the precision for this CPU (`choose_inference_dtype`),
            converts the model and logs the choice (also in `model.inference_choice`);
            "fp32" / "bf16" ask for one. None (default) keeps the model's dtype.
        kernel: the linear layers' kernel: "auto" (the faster of oneDNN and aten per shape
            on this machine, timed at the first call: `kernel_choices()` lists them),
            "onednn" or "aten".

    Returns:
        The same model object.
    """
    if dtype is not None:
        if matmul_dtype is not None:
            raise ValueError("give either dtype (the precision chosen for this CPU) or matmul_dtype, not both")
        storage, matmul_dtype, why = choose_inference_dtype(dtype)
        model.to(storage)
        model.inference_choice = why
        log.info("optimize_for_inference: %s", why)
    for module in list(model.modules()):
        if isinstance(module, Mlp) and type(module.act) is nn.GELU and module.act.approximate == "none":
            module.fc1 = InferenceLinear(module.fc1, "gelu", matmul_dtype, kernel)
            module.act = nn.Identity()  # now inside fc1
            module.act_in_place = None
        if isinstance(module, WindowAttention):
            module.matmul_dtype = matmul_dtype
        if isinstance(module, ATTENTION_MODULES) and module.fused in (True, "auto"):
            module.fused = "timed"  # the faster of the fused kernel and explicit matmuls, per shape, any dtype
        for name, child in module.named_children():
            if type(child) in (nn.Linear, FastLinear):
                setattr(module, name, InferenceLinear(child, "none", matmul_dtype, kernel))
    return model
