"""FastLinear: nn.Linear's numbers and gradients with the training GEMMs on the kernel timed fastest per shape."""

import copy

import pytest
import torch
from torch import nn

import tessera
from tessera.inference import InferenceLinear, optimize_for_inference
from tessera.layers import fast_linear
from tessera.layers.fast_linear import FastLinear, fast_linear_applies, fast_linear_choices, use_fast_linear


@pytest.fixture
def fresh_choices(monkeypatch):
    """Empty kernel tables for the test (the process-wide ones keep other tests' picks)."""
    forward = fast_linear.LinearGemmChoices("forward", fast_linear.FORWARD_CHOICES.kernels)
    grad_input = fast_linear.LinearGemmChoices("grad_input", fast_linear.GRAD_INPUT_CHOICES.kernels)
    monkeypatch.setattr(fast_linear, "FORWARD_CHOICES", forward)
    monkeypatch.setattr(fast_linear, "GRAD_INPUT_CHOICES", grad_input)
    return forward, grad_input


def favour(monkeypatch, chooser, winner: str, calls: list | None = None):
    """Make `winner` the faster kernel of `chooser` (recording each timed call in `calls`)."""
    def fake_time(name, *args):
        if calls is not None:
            calls.append((chooser.gemm, name, args[-1].shape if chooser.gemm == "grad_input" else args[1].shape))
        return 1.0 if name == winner else 2.0
    monkeypatch.setattr(chooser, "time_kernel", fake_time)


def pair(bias: bool = True):
    torch.manual_seed(0)
    ref = nn.Linear(24, 40, bias=bias)
    fast = copy.deepcopy(ref)
    assert use_fast_linear(fast) == 1 and type(fast) is FastLinear
    return ref, fast


def grads(layer, x, ref_out=None):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).square().sum().backward()
    return y.detach(), x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


@pytest.mark.parametrize("kernel", ["onednn", "aten"])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_nn_linear_whichever_kernel_wins(monkeypatch, fresh_choices, kernel, bias):
    forward, grad_input = fresh_choices
    favour(monkeypatch, forward, kernel)
    favour(monkeypatch, grad_input, kernel)
    ref, fast = pair(bias)
    x = torch.randn(3, 7, 24)
    expected, got = grads(ref, x), grads(fast, x)
    for e, g in zip(expected, got):
        if e is None:
            assert g is None
        else:
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert {r["kernel"] for r in fast_linear_choices()} == {kernel}
    assert {r["gemm"] for r in fast_linear_choices()} == {"forward", "grad_input"}


def test_each_gemm_is_timed_once_per_shape_and_the_faster_kept(monkeypatch, fresh_choices):
    forward, grad_input = fresh_choices
    calls: list = []
    favour(monkeypatch, forward, "onednn", calls)
    favour(monkeypatch, grad_input, "aten", calls)
    _, fast = pair()
    for rows in (10, 12, 10, 40):  # 10 and 12 rows share a power-of-two bucket (16); 40 is another (64)
        fast(torch.randn(rows, 24, requires_grad=True)).sum().backward()
    reps = forward.repeats + 1  # a warm-up call and `repeats` timed calls of each kernel, once per case
    assert len(calls) == 2 * 2 * 2 * reps  # 2 GEMMs x 2 kernels x 2 buckets
    table = {(r["gemm"], r["rows"]): r["kernel"] for r in fast_linear_choices()}
    assert table == {("forward", 16): "onednn", ("forward", 64): "onednn",
                     ("grad_input", 16): "aten", ("grad_input", 64): "aten"}


def test_the_weight_gradient_is_not_computed_when_only_the_inputs_is_asked_for(monkeypatch):
    computed = []
    real = fast_linear._aten_grad_weight
    monkeypatch.setattr(fast_linear, "_aten_grad_weight", lambda dy, x: computed.append(1) or real(dy, x))
    ref, fast = pair()
    x = torch.randn(5, 24, requires_grad=True)
    (dx,) = torch.autograd.grad(fast(x).square().sum(), x)  # Langevin sampling's question: dE/dx alone
    assert computed == []
    (expected,) = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(dx, expected, atol=1e-5, rtol=1e-5)
    fast(x).sum().backward()
    assert computed == [1] and fast.weight.grad is not None


def test_double_backward_equals_nn_linears():
    ref, fast = pair()
    x = torch.randn(6, 24)
    for layer in (ref, fast):  # a gradient penalty: || d out / d x ||^2, then its gradient
        xi = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(torch.tanh(layer(xi)).sum(), xi, create_graph=True)
        dx.square().sum().backward()
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, atol=1e-5, rtol=1e-5)


def test_without_autograd_in_autocast_and_in_other_dtypes_it_is_f_linear(monkeypatch):
    ref, fast = pair()
    x = torch.randn(4, 24)
    assert fast_linear_applies(x.requires_grad_(), fast.weight)
    with torch.no_grad():
        assert not fast_linear_applies(x, fast.weight)
        assert torch.equal(fast(x), ref(x))  # bit for bit: the plain path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_linear_applies(x, fast.weight)
        assert fast(x).dtype == torch.bfloat16
    assert not fast_linear_applies(x.double(), fast.weight.double())
    monkeypatch.setattr(fast_linear._FastLinearFunction, "apply", lambda *a: pytest.fail("timed path taken"))
    with torch.no_grad():
        fast(x)


def test_use_fast_linear_converts_a_model_in_place_and_back_keeping_its_state():
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
              drop_path_rate=0.0, num_classes=5)
    ref = tessera.create_model("swin_tiny_patch4_window7_224", **kw)
    model = copy.deepcopy(ref)
    weights = [p for p in model.parameters()]
    keys = list(model.state_dict())
    plain = sum(type(m) is nn.Linear for m in model.modules())
    assert use_fast_linear(model) == plain > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert list(model.parameters()) == weights and list(model.state_dict()) == keys
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    model.set_grad_checkpointing(True)  # the recomputed forward goes through the same Function
    for net in (ref, model):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    copied = copy.deepcopy(model)  # the class travels with copies (and pickles)
    assert sum(type(m) is FastLinear for m in copied.modules()) == plain
    optimize_for_inference(model.eval())  # the inference swap still finds every linear layer
    assert sum(isinstance(m, InferenceLinear) for m in model.modules()) == plain
    assert use_fast_linear(copied, enable=False) == plain
    assert sum(type(m) is nn.Linear for m in copied.modules()) == plain


def test_the_picks_travel_as_plain_data_and_restored_ones_are_not_timed_again(monkeypatch, fresh_choices):
    from tessera.train.callbacks import FastLinearKernels

    forward, grad_input = fresh_choices
    favour(monkeypatch, forward, "onednn")
    favour(monkeypatch, grad_input, "aten")
    _, fast = pair()
    fast(torch.randn(10, 24, requires_grad=True)).sum().backward()
    state = FastLinearKernels().state_dict()
    assert state == {"kernels": {"forward": [(16, 24, 40, "float32", "onednn", {"onednn": 1.0, "aten": 2.0})],
                                 "grad_input": [(16, 24, 40, "float32", "aten", {"onednn": 2.0, "aten": 1.0})]}}
    forward.table.clear()
    grad_input.table.clear()
    for chooser in (forward, grad_input):  # a new process: nothing may be timed for the restored cases
        monkeypatch.setattr(chooser, "time_kernel", lambda *a: pytest.fail("timed again"))
    FastLinearKernels().load_state_dict(state)
    fast(torch.randn(12, 24, requires_grad=True)).sum().backward()
    assert {(r["gemm"], r["kernel"]) for r in fast_linear_choices()} == {("forward", "onednn"), ("grad_input", "aten")}


def test_an_input_of_the_wrong_width_gets_torchs_own_shape_error():
    model = nn.Sequential(nn.Linear(8, 4))
    assert use_fast_linear(model) == 1
    with pytest.raises(RuntimeError, match=r"cannot be multiplied \(3x5 and 8x4\)"):  # not oneDNN's "primitive descriptor"
        model(torch.randn(3, 5, requires_grad=True))
