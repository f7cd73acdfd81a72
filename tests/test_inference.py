"""Opt-in inference optimisations: same numbers as the plain path, same parameters, autograd untouched."""

import copy
import io

import pytest
import torch
from torch import nn

import tessera
from tessera.inference import InferenceLinear, optimize_for_inference
from tessera.layers import Mlp

TINY = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)


def tiny_swin():
    torch.manual_seed(0)
    return tessera.create_model("swin_tiny_patch4_window7_224", **TINY).eval()


def test_inference_linear_equals_linear_and_gelu():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    with torch.inference_mode():
        torch.testing.assert_close(InferenceLinear(lin)(x), lin(x), atol=1e-5, rtol=1e-5)
        fused = InferenceLinear(lin, "gelu")(x)
        torch.testing.assert_close(fused, nn.functional.gelu(lin(x)), atol=1e-5, rtol=1e-5)
    assert InferenceLinear(lin).weight is lin.weight  # shared, not copied


def test_each_kernel_equals_linear_and_gelu():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    with torch.inference_mode():
        for kernel in ("onednn", "aten", "auto"):
            torch.testing.assert_close(InferenceLinear(lin, kernel=kernel)(x), lin(x), atol=1e-5, rtol=1e-5)
            fused = InferenceLinear(lin, "gelu", kernel=kernel)(x)
            torch.testing.assert_close(fused, nn.functional.gelu(lin(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kernel must be"):
        InferenceLinear(lin, kernel="mkl")


def test_onednn_kernel_runs_on_a_packed_weight_kept_until_the_weight_changes():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    layer = InferenceLinear(lin, "gelu", kernel="onednn")
    x = torch.randn(3, 5, 24)
    with torch.inference_mode():
        layer(x)
        packed = layer._packed[1]
        assert packed.is_mkldnn and packed.shape == lin.weight.shape
        layer(x[:1])
        assert layer._packed[1] is packed  # reordered once, not at every call
    layer.load_state_dict({"weight": 2 * lin.weight.detach(), "bias": lin.bias.detach()})  # in place: new version
    with torch.inference_mode():
        y = layer(x)
    assert layer._packed[1] is not packed
    torch.testing.assert_close(y, nn.functional.gelu(lin(x)).detach(), atol=1e-5, rtol=1e-5)
    clone = copy.deepcopy(layer)  # an opaque oneDNN tensor cannot be copied: the clone packs its own
    assert clone._packed is None and layer._packed is not None
    torch.save(layer, io.BytesIO())
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), y)
    low = InferenceLinear(copy.deepcopy(lin).bfloat16(), matmul_dtype=torch.float32, kernel="onednn")
    with torch.inference_mode():
        low(x.bfloat16())
    assert low._packed[1].dtype == torch.float32  # packed once in the matmul dtype, not converted per call


def test_aten_kernel_applies_gelu_in_place_without_autograd_and_out_of_place_with_it(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    outputs = []
    real_linear = nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda *a: outputs.append(real_linear(*a)) or outputs[-1])
    layer = InferenceLinear(lin, "gelu", kernel="aten")
    with torch.inference_mode():
        y = layer(x)
    assert y.data_ptr() == outputs[-1].data_ptr()  # GELU wrote over the linear output: one tensor, not two
    torch.testing.assert_close(y, nn.functional.gelu(real_linear(x, lin.weight, lin.bias)))
    x_grad = x.clone().requires_grad_()
    layer(x_grad).sum().backward()  # autograd keeps the pre-activation for GELU's backward
    reference = x.clone().requires_grad_()
    nn.functional.gelu(real_linear(reference, lin.weight, lin.bias)).sum().backward()
    torch.testing.assert_close(x_grad.grad, reference.grad)


def test_auto_kernel_takes_the_faster_one_per_shape_and_times_each_case_once(monkeypatch):
    from tessera import inference

    choices = inference.KernelChoices()
    monkeypatch.setattr(inference, "KERNEL_CHOICES", choices)
    timed: list[tuple[str, int]] = []
    fake = {("onednn", 24): 1.0, ("aten", 24): 2.0, ("onednn", 48): 3.0, ("aten", 48): 1.5}

    def fake_time(name, x, w, b, activation, packed):
        timed.append((name, w.shape[1]))
        return fake[(name, w.shape[1])]

    monkeypatch.setattr(choices, "time_kernel", fake_time)
    small, wide = InferenceLinear(nn.Linear(24, 8)), InferenceLinear(nn.Linear(48, 8))
    with torch.inference_mode():
        for _ in range(3):
            small(torch.randn(10, 24))
            wide(torch.randn(10, 48))
        small(torch.randn(12, 24))  # 12 rows: the same power-of-two bucket (16) as 10
        small(torch.randn(40, 24))  # another bucket: timed again
    reps = choices.repeats + 1  # each case, once: every kernel a warm-up call and `repeats` timed calls
    assert sorted(timed) == sorted(([("onednn", 24), ("aten", 24)] * 2 + [("onednn", 48), ("aten", 48)]) * reps)
    table = {(r["in"], r["rows"]): r["kernel"] for r in inference.kernel_choices()}
    assert table == {(24, 16): "onednn", (48, 16): "aten", (24, 64): "onednn"}
    assert small._packed is not None and wide._packed is None  # a reordered copy only where oneDNN runs
    with torch.no_grad(), torch.enable_grad():
        small(torch.randn(10, 24, requires_grad=True)).sum().backward()  # autograd: aten, nothing timed
    assert len(timed) == 6 * reps


def test_auto_attention_takes_the_faster_kernel_per_shape_and_equals_the_fused_one(monkeypatch):
    from tessera.layers import attention

    choices = attention.AttentionChoices()
    monkeypatch.setattr(attention, "ATTENTION_CHOICES", choices)
    monkeypatch.setattr(attention, "TRAINING_ATTENTION_CHOICES", attention.TrainingAttentionChoices())
    fake = {("sdpa", 8): 2.0, ("explicit", 8): 1.0, ("sdpa", 16): 1.0, ("explicit", 16): 3.0}
    timed: list[tuple[str, int]] = []

    def fake_time(name, q, k, v, bias):
        timed.append((name, q.shape[-2]))
        return fake[(name, q.shape[-2])]

    monkeypatch.setattr(choices, "time_kernel", fake_time)
    torch.manual_seed(0)
    short, long = [torch.randn(2, 3, 8, 4) for _ in range(3)], [torch.randn(2, 3, 16, 4) for _ in range(3)]
    bias = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        for _ in range(2):
            got = attention.attend(*short, bias, fused="timed")
            torch.testing.assert_close(got, attention.attend(*short, bias, fused=True), atol=1e-5, rtol=1e-5)
            attention.attend(*long, fused="timed")
    reps = choices.repeats + 1  # a warm-up call and `repeats` timed calls
    assert sorted(timed) == sorted([("sdpa", 8), ("explicit", 8), ("sdpa", 16), ("explicit", 16)] * reps)
    assert {r["queries"]: r["kernel"] for r in attention.attention_choices()} == {8: "explicit", 16: "sdpa"}
    q = short[0].clone().requires_grad_()
    attention.attend(q, *short[1:], fused="timed").sum().backward()  # autograd: the fused kernel, nothing timed
    assert len(timed) == 4 * reps and q.grad is not None
    with torch.inference_mode():  # the modules' default: fp32 takes the fused kernel untimed, bf16 is timed
        attention.attend(*[t[:1] for t in short], fused="auto")
        assert len(timed) == 4 * reps
        attention.attend(*[t.bfloat16() for t in short], fused="auto")
    assert len(timed) == 6 * reps and choices.table.keys() >= {attention.AttentionChoices.key(
        short[0].bfloat16(), short[1].bfloat16(), None)}


def test_timed_attention_under_autograd_times_forward_and_backward_and_gives_the_same_gradients(monkeypatch):
    from tessera.layers import attention

    inference, training = attention.AttentionChoices(), attention.TrainingAttentionChoices(repeats=2)
    monkeypatch.setattr(attention, "ATTENTION_CHOICES", inference)
    monkeypatch.setattr(attention, "TRAINING_ATTENTION_CHOICES", training)
    torch.manual_seed(0)
    q, k, v = [torch.randn(2, 3, 8, 4, requires_grad=True) for _ in range(3)]
    table = torch.randn(3, 8, 8, requires_grad=True)  # a learned bias: its gradient flows through either kernel
    grads = {}
    for fused in (True, "timed"):
        out = attention.attend(q, k, v, table[None], fused=fused)
        grads[fused] = torch.autograd.grad((out * out).sum(), (q, k, v, table))
    for a, b in zip(grads[True], grads["timed"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(training.table) == 1 and not inference.table  # timed with backward, the caller's graph untouched
    (choice, times), = training.table.values()
    assert choice in ("sdpa", "explicit") and all(0 < t < 10 for t in times.values())
    assert all(r["backward"] for r in attention.attention_choices())


def test_optimize_for_inference_lets_every_attention_choose_and_keeps_the_outputs():
    torch.manual_seed(0)
    plain = tessera.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    fast = optimize_for_inference(copy.deepcopy(plain))
    assert {m.fused for m in fast.modules() if hasattr(m, "fused")} == {"timed"}
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
        low = optimize_for_inference(copy.deepcopy(plain), dtype="bf16")(x.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - plain(x)).abs().max() < 0.1 * plain(x).abs().max()


@pytest.mark.slow
def test_optimized_swin_equals_plain_path_and_keeps_the_state_dict():
    plain = tiny_swin()
    fast = optimize_for_inference(copy.deepcopy(plain))
    assert not any(type(m) is nn.Linear for m in fast.modules())
    mlp = next(m for m in fast.modules() if isinstance(m, Mlp))
    assert mlp.fc1.activation == "gelu" and isinstance(mlp.act, nn.Identity)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 32, 30)  # padded windows and shift masks
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    # weights loaded after the swap are used (parameters are shared with the swapped modules)
    other = tiny_swin()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fast.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), other(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_optimized_model_trains_like_the_plain_one():
    plain = tiny_swin().train()
    fast = optimize_for_inference(copy.deepcopy(plain)).train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, fast):
        torch.manual_seed(1)  # same stochastic-depth draws
        model(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_with_fp32_matmuls(dtype):
    """bf16 / fp16 storage, fp32 matmuls: finite, close to fp32, parameters stay low precision."""
    plain = tiny_swin()
    low = optimize_for_inference(copy.deepcopy(plain).to(dtype), matmul_dtype=torch.float32)
    assert all(p.dtype == dtype for p in low.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y = low(x.to(dtype))
        ref = plain(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=5e-2)


def test_low_precision_without_matmul_dtype_falls_back_to_f_linear():
    """oneDNN's bf16 inner product needs bf16 hardware: without matmul_dtype the plain path runs."""
    lin = nn.Linear(8, 16).to(torch.bfloat16)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(InferenceLinear(lin)(x), lin(x))


@pytest.mark.parametrize("kernel", ["auto", "onednn"])
def test_an_input_of_the_wrong_width_or_dtype_gets_torchs_own_error(kernel):
    layer = InferenceLinear(nn.Linear(8, 4), "gelu", kernel=kernel)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"cannot be multiplied \(3x5 and 8x4\)"):
        layer(torch.randn(3, 5))  # oneDNN alone would say it cannot create a primitive descriptor
    with torch.no_grad(), pytest.raises(RuntimeError, match="must have the same dtype"):
        layer.to(torch.bfloat16)(torch.randn(3, 8))  # an fp32 batch into a bf16 model
    with torch.no_grad():
        assert layer.float()(torch.randn(2, 0, 8)).shape == (2, 0, 4)
