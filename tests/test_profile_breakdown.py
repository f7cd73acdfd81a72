"""Where the time goes: op categories of the profiler's self times."""

import torch
from torch import nn

from tessera.profile import BREAKDOWN_KEYS, op_category, time_breakdown


def test_op_names_fall_into_their_categories():
    assert op_category("aten::addmm") == "gemm"
    assert op_category("mkldnn::_linear_pointwise") == "gemm"
    assert op_category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_category("aten::native_layer_norm") == "norm"
    assert op_category("aten::gelu") == "activation"
    assert op_category("aten::copy_") == "layout"
    assert op_category("aten::add") == "elementwise"
    assert op_category("aten::some_new_op") == "other ops"


def test_a_gemm_heavy_call_is_mostly_gemm_and_a_norm_heavy_one_mostly_norm(one_thread):
    torch.manual_seed(0)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    norm = nn.LayerNorm(64)
    x = torch.randn(400, 64)
    with torch.inference_mode():
        gemm = time_breakdown(lambda: a @ b, iters=3)
        layer_norm = time_breakdown(lambda: norm(x), iters=50)
    assert set(gemm) == {*BREAKDOWN_KEYS, "total"}
    # the largest category of op time: shares against the wall clock (Python, dispatch) or of the
    # allocations (fresh pages or heap reuse) swing with the host and the process's history
    ops = [k for k in BREAKDOWN_KEYS if k != "python and dispatch"]
    assert max(ops, key=gemm.get) == "gemm" and gemm["gemm"] > 0.5 * sum(gemm[k] for k in ops), gemm
    assert max(ops, key=layer_norm.get) == "norm" and layer_norm["norm"] > 0.5 * sum(layer_norm[k] for k in ops), layer_norm
    assert sum(v for k, v in gemm.items() if k != "total") <= gemm["total"] * 1.001

