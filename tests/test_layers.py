import pytest
import torch

from tessera.layers import (
    Attention,
    CrossAttention,
    DropPath,
    Mlp,
    PatchEmbed,
    RelativePositionBias,
    attend,
    relative_position_index,
    resample_abs_pos_embed,
    resize_rel_pos_table,
    sincos_2d,
)
from tessera.layers.attention import explicit_attention as _explicit


def test_fused_attention_equals_explicit_softmax():
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    bias = torch.randn(1, 4, 10, 10)
    bias[..., 3] = -100.0  # a masked key
    fused = attend(q, k, v, bias, fused=True)
    explicit = attend(q, k, v, bias, fused=False)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while `fn` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_a_bias_that_needs_a_gradient_takes_the_explicit_path_with_sdpas_gradients(monkeypatch):
    import tessera.layers.attention as attention

    qkv = torch.randn(2, 10, 3, 4, 8, requires_grad=True)  # a fused projection's output, as Swin's
    bias = torch.randn(1, 4, 10, 10, requires_grad=True)  # the learned relative position bias

    def split():  # (B, h, N, d) slices of one (3, B, h, N, d) copy, as WindowAttention's rearrange gives
        return qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)

    def grads(fused):
        q, k, v = split()
        out = attend(q, k, v, bias, fused)
        return torch.autograd.grad((out * torch.arange(8.0)).sum(), (qkv, bias))

    calls = []
    monkeypatch.setattr(attention, "explicit_attention", lambda *a: calls.append(1) or _explicit(*a))
    reference = grads(True)  # torch's SDPA (its math fallback: the bias needs a gradient)
    auto = grads("auto")
    assert calls, "fp32 attention with a bias that needs a gradient should take the explicit path"
    for a, b in zip(auto, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    q, k, v = split()
    # backward keeps q, k, v and the weights, but no scaled copy of q as SDPA's fallback does
    assert _saved_bytes(lambda: _explicit(q, k, v, bias)) < _saved_bytes(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    )
    with torch.no_grad():  # without autograd the fused kernel can take the bias: SDPA as before
        calls.clear()
        attend(q, k, v, bias, "auto")
        assert not calls


def test_attention_module_shapes_and_reference_path():
    attn = Attention(dim=32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    y = attn(x)
    attn.fused = False
    torch.testing.assert_close(y, attn(x), atol=1e-5, rtol=1e-5)
    assert y.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        Attention(dim=30, num_heads=4)


def test_cross_attention_keys_come_from_context():
    attn = CrossAttention(dim=16, context_dim=24, num_heads=2).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 24)
    y = attn(x, ctx)
    assert y.shape == (2, 5, 16)
    # Changing the context changes the output; a single query token attends the whole context.
    assert not torch.allclose(y, attn(x, ctx + 1))
    with pytest.raises(ValueError, match="context"):
        attn(x, torch.randn(3, 3, 24))


def test_drop_path_keeps_expectation_and_is_identity_at_eval():
    dp = DropPath(0.25)
    x = torch.ones(20000, 4)
    y = dp.train()(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03
    assert torch.equal(dp.eval()(x), x)


def test_patch_embed_is_flatten_then_linear():
    pe = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8)
    x = torch.randn(2, 3, 8, 12)
    y = pe(x)  # (B, H/P, W/P, C)
    assert y.shape == (2, 2, 3, 8)
    patch = x[:, :, 4:8, 8:12].reshape(2, -1)  # patch (1, 2), flattened as (C, P, P)
    expected = patch @ pe.proj.weight.reshape(8, -1).T + pe.proj.bias
    torch.testing.assert_close(y[:, 1, 2], expected, atol=1e-5, rtol=1e-5)


def test_patch_embed_pads_when_asked_and_rejects_tiny_images():
    pe = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8, pad=True)
    assert pe(torch.randn(1, 3, 9, 6)).shape == (1, 3, 2, 8)
    with pytest.raises(ValueError, match="smaller than one patch"):
        pe(torch.randn(1, 3, 3, 8))


def test_mlp_shapes():
    assert Mlp(8, 32, 4)(torch.randn(3, 5, 8)).shape == (3, 5, 4)


def test_mlp_in_place_gelu_at_inference_matches_autograd_path_and_spares_the_input():
    mlp = Mlp(8, 32, 4)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        fast = mlp(x)
    torch.testing.assert_close(fast, mlp(x), rtol=0, atol=0)
    mlp.fc1 = torch.nn.Identity()  # hidden == input: GELU must not overwrite the caller's tensor
    mlp.fc2 = torch.nn.Linear(8, 4)
    before = x.clone()
    with torch.no_grad():
        out = mlp(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(out, mlp.fc2(torch.nn.functional.gelu(x)))


def test_sincos_2d_rows_differ_and_are_bounded():
    pe = sincos_2d((4, 6), 16)
    assert pe.shape == (24, 16)
    assert pe.abs().max() <= 1.0
    assert torch.unique(pe, dim=0).shape[0] == 24
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d((2, 2), 10)


def test_resample_abs_pos_embed_keeps_prefix_and_sizes():
    pos = torch.randn(1, 2 + 16, 8)
    same = resample_abs_pos_embed(pos, (4, 4), num_prefix_tokens=2)
    assert same is pos
    out = resample_abs_pos_embed(pos, (6, 3), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 18, 8)
    assert torch.equal(out[:, :2], pos[:, :2])


def test_relative_position_index_counts_offsets():
    idx = relative_position_index((3, 2))
    assert idx.shape == (6, 6)
    assert idx.max().item() == (2 * 3 - 1) * (2 * 2 - 1) - 1
    # Same offset -> same entry: (0,0)->(1,1) and (1,0)->(2,1) are both (+1, +1).
    assert idx[0, 3] == idx[2, 5]
    assert (idx.diagonal() == idx[0, 0]).all()


def test_relative_position_bias_shape_and_resize():
    rpb = RelativePositionBias(4, num_heads=3)
    assert rpb().shape == (3, 16, 16)
    assert "index" not in rpb.state_dict()
    bigger = resize_rel_pos_table(rpb.table.detach(), (6, 6), (4, 4))
    assert bigger.shape == (11 * 11, 3)
    torch.testing.assert_close(resize_rel_pos_table(rpb.table, (4, 4)), rpb.table)


def test_window_steps_cyclic_shift_pad_partition_are_inverse_or_zero():
    from tessera.layers.window_attention import cyclic_shift, pad_to_windows, reverse_cyclic_shift

    x = torch.randn(2, 7, 9, 3)
    rolled = cyclic_shift(x, (2, 3))
    assert torch.equal(rolled[:, 0, 0], x[:, 2, 3])  # the first rows / columns wrap to the end
    assert torch.equal(reverse_cyclic_shift(rolled, (2, 3)), x)
    assert cyclic_shift(x, (0, 0)) is x
    padded = pad_to_windows(x, (4, 4))
    assert padded.shape == (2, 8, 12, 3) and torch.equal(padded[:, :7, :9], x)
    assert padded[:, 7:].abs().sum() == 0 and padded[:, :, 9:].abs().sum() == 0
    assert pad_to_windows(padded, (4, 4)) is padded
