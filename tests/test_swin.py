"""Swin Transformer: window attention, shift mask, ablation switches, input sizes, figures."""

import math

import pytest
import torch

import tessera
from tessera.layers import RelativePositionBias, WindowAttention, shifted_window_mask, window_partition, window_reverse
from tessera.layers.window_attention import MASK_VALUE, cyclic_shift
from tessera.models import swin as swin_mod
from tessera.models import swin_fast
from tessera.models.swin import SwinBlock, SwinConfig, SwinTransformer, shifted_window_attention, stage_window
from tessera.models.swin_fast import SwinFastPath, map_order, traced_window_and_shift, window_order

TINY = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)


def tiny(**kw) -> SwinTransformer:
    return tessera.create_model("swin_tiny_patch4_window7_224", **{**TINY, **kw}).eval()


# ---------------------------------------------------------------- shift mask


def brute_force_allowed(grid, window, shift):
    """allowed[w, i, j]: tokens i, j of rolled window w share a window of the shifted, padded grid.

    The shifted partition, in the original (unrolled) coordinates, cuts each
    axis at s, s + M, s + 2M, ...: a token at y lies in sub-window floor((y - s) / M).
    """
    H, W = grid
    (wh, ww), (sh, sw) = window, shift
    out = []
    for wy in range(H // wh):
        for wx in range(W // ww):
            ids = []
            for i in range(wh * ww):
                ry, rx = wy * wh + i // ww, wx * ww + i % ww  # position after roll by -s
                y, x = (ry + sh) % H, (rx + sw) % W  # where the token came from
                ids.append((math.floor((y - sh) / wh), math.floor((x - sw) / ww)))
            out.append([[a == b for b in ids] for a in ids])
    return torch.tensor(out)


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((8, 8), (4, 4), (2, 2)),
        ((14, 14), (7, 7), (3, 3)),  # e.g. a 10 x 12 map padded to 14 x 14
        ((12, 8), (6, 4), (3, 2)),  # an (h, w) window pair
        ((9, 10), (3, 5), (1, 2)),
    ],
)
def test_shift_mask_matches_brute_force(grid, window, shift):
    mask = shifted_window_mask(grid, window, shift)
    allowed = brute_force_allowed(grid, window, shift)
    assert mask.shape == allowed.shape
    assert torch.equal(mask == 0, allowed)
    assert torch.all((mask == 0) | (mask == MASK_VALUE))
    assert not allowed.all(), "the test grid must contain seams"


def test_partition_and_reverse_are_inverse():
    x = torch.randn(2, 12, 10, 3)
    windows = window_partition(x, (4, 5))
    assert windows.shape == (2, 6, 20, 3)
    assert torch.equal(windows[0, 1, 6], x[0, 1, 6])  # window (0, 1), token (1, 1)
    assert torch.equal(window_reverse(windows, (4, 5), (12, 10)), x)


def _reference_shifted_attention(x, attn, window, shift):
    """Global attention over the zero-padded map; pair (p, q) allowed iff same shifted sub-window."""
    B, H, W, C = x.shape
    (wh, ww), (sh, sw) = window, shift
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    xp = torch.nn.functional.pad(x, (0, 0, 0, Wp - W, 0, Hp - H)).reshape(B, Hp * Wp, C)
    h = attn.num_heads
    q, k, v = attn.qkv(xp).reshape(B, Hp * Wp, 3, h, C // h).permute(2, 0, 3, 1, 4)
    ys, xs = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    sub = torch.div(ys - sh, wh, rounding_mode="floor") * 10_000 + torch.div(xs - sw, ww, rounding_mode="floor")
    allowed = sub[:, None] == sub[None, :]
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    table = attn.rel_pos_bias.table
    bias = table[(dy.clamp(0, 2 * wh - 2) * (2 * ww - 1) + dx.clamp(0, 2 * ww - 2))].permute(2, 0, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // h) + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, Hp, Wp, C)
    return attn.proj(out)[:, :H, :W]


@pytest.mark.parametrize("hw, window", [((10, 9), (4, 4)), ((12, 11), (6, 4)), ((8, 8), (4, 4))])
@pytest.mark.parametrize("path", ["plain", "fast"])
def test_shifted_window_attention_equals_masked_global_attention(hw, window, path):
    """Roll + partition + mask + reverse == attention restricted to the shifted sub-windows (both paths)."""
    block = SwinBlock(16, 2, window, shifted=True).eval()
    attn = block.attn
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
        x = torch.randn(2, *hw, 16)
        shift = (window[0] // 2, window[1] // 2)
        assert block.window_and_shift(hw) == (window, shift)
        if path == "plain":
            ours = shifted_window_attention(x, attn, window, shift)
        else:
            ours = SwinFastPath().msa(block, x, chunk=None)
        ref = _reference_shifted_attention(x, attn, window, shift)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- windows, buffers, bias


def test_stage_window_rule():
    assert stage_window((56, 56), (7, 7), True) == ((7, 7), (3, 3))
    assert stage_window((56, 56), (7, 7), False) == ((7, 7), (0, 0))
    assert stage_window((7, 7), (7, 7), True) == ((7, 7), (0, 0))  # Swin-T stage 4 at 224: no shift
    assert stage_window((8, 6), (7, 7), True) == ((6, 6), (0, 0))  # as transformers: min(H, W)
    assert stage_window((16, 12), (8, 4), True) == ((8, 4), (4, 2))
    assert stage_window((6, 12), (8, 4), True) == ((6, 4), (0, 0))


def test_smaller_window_reads_the_centre_of_the_table():
    attn = WindowAttention(8, 2, (4, 4))
    small = RelativePositionBias((2, 3), 2)
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
        table = attn.rel_pos_bias.table.reshape(7, 7, 2)[2:5, 1:6]  # offsets |dy| <= 1, |dx| <= 2
        small.table.copy_(table.reshape(-1, 2))
    torch.testing.assert_close(attn.relative_bias((2, 3)), small())
    with pytest.raises(ValueError, match="larger"):
        attn.relative_bias((5, 4))


def test_index_and_masks_are_not_in_state_dict():
    model = tiny()
    with torch.no_grad():
        model(torch.randn(1, 3, 30, 26))  # another resolution: masks computed and cached, state unchanged
    keys = set(model.state_dict())
    assert not any("index" in k or "mask" in k for k in keys)
    assert keys == {n for n, _ in model.named_parameters()}
    assert any(n.endswith("rel_pos_bias.index") for n, _ in model.named_buffers())


def test_mask_is_cached_per_resolution():
    from tessera.models.swin_fast import cached_shift_mask

    a = cached_shift_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"))
    with torch.inference_mode():
        b = cached_shift_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"))
    assert a is b and not a.is_inference() and not a.requires_grad


def _plain_window_attention(attn, x, mask):
    """The 5-D reference: Softmax(Q K^T / sqrt(d) + B + mask) V per window, explicit softmax."""
    B, nW, N, C = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5)  # (B, nW, h, N, d) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // h) + attn.relative_bias()
    scores = scores if mask is None else scores + mask[:, None]
    out = (scores.softmax(-1) @ v).transpose(2, 3).reshape(B, nW, N, C)
    return attn.proj(out)


def test_window_attention_equals_explicit_reference_and_keeps_no_state():
    attn = WindowAttention(16, 2, (4, 4)).eval()
    mask = shifted_window_mask((8, 8), (4, 4), (2, 2))
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
        ref = _plain_window_attention(attn, x, mask)
    before = dict(vars(attn))
    torch.testing.assert_close(attn(x, mask), ref, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x, mask), ref, atol=1e-5, rtol=1e-5)
    attn.fused = False  # the explicit softmax of `attend`
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), ref, atol=1e-5, rtol=1e-5)
    attn.fused = "auto"  # the default
    assert vars(attn).keys() == before.keys() and all(vars(attn)[k] is v for k, v in before.items())


def test_fast_path_caches_the_bias_per_layer_and_key():
    attn = WindowAttention(16, 2, (4, 4)).eval()
    fast = SwinFastPath()
    mask = swin_fast.cached_shift_mask((8, 8), (4, 4), (2, 2), torch.device("cpu"))
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
    fresh = attn.window_bias(mask, (4, 4), torch.float32)
    bias = fast.window_bias(attn, mask, (4, 4), torch.float32)  # autograd on: computed, not cached
    assert not fast._bias and torch.equal(bias, fresh)
    with torch.inference_mode():
        cached = fast.window_bias(attn, mask, (4, 4), torch.float32)
        assert fast.window_bias(attn, mask, (4, 4), torch.float32) is cached
        assert torch.equal(cached, fresh)
        w_msa = fast.window_bias(attn, None, (4, 4), torch.float32)  # another key: rebuilt
        assert w_msa.shape == (1, 2, 16, 16)
    with torch.no_grad():
        attn.rel_pos_bias.table.mul_(2.0)  # bumps the version counter
        assert torch.equal(fast.window_bias(attn, None, (4, 4), torch.float32), 2 * w_msa)
    assert not any("cache" in k or "bias" == k for k in attn.state_dict())
    import copy, pickle

    assert not copy.deepcopy(fast)._bias and pickle.loads(pickle.dumps(fast)).chunk_tokens == fast.chunk_tokens


@pytest.mark.parametrize("masked", [False, True])
def test_window_attention_in_groups_of_windows_equals_all_at_once(masked):
    attn = WindowAttention(16, 2, (4, 4)).eval()
    mask = shifted_window_mask((8, 12), (4, 4), (2, 2)) if masked else None  # 6 windows
    x = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
        ref = _plain_window_attention(attn, x, mask)
        groups: list[int] = []
        attn.qkv.register_forward_hook(lambda m, args, out: groups.append(args[0].shape[1]))
        bias = attn.window_bias(mask)
        grouped = SwinFastPath.attend(attn, x, bias, chunk=2 * 16 * 2)  # 2 windows of 16 tokens, both images
    assert groups == [2, 2, 2]
    torch.testing.assert_close(grouped, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bias_cache_follows_weight_changes():
    """load_state_dict, in-place updates and a replaced table all invalidate the cached B + mask."""
    model = tiny()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
    other = tiny()
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.endswith("rel_pos_bias.table"):
                p.normal_()
    model.load_state_dict(other.state_dict())  # copies into the same tensors: version counters move
    with torch.inference_mode():
        after = model(x)
        torch.testing.assert_close(after, other(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)
    table = model.stages[0].blocks[1].attn.rel_pos_bias.table
    with torch.no_grad():
        table.mul_(5.0)  # an in-place step (a constant shift would cancel in the softmax)
        assert not torch.allclose(model(x), after)
        table.div_(5.0)
        torch.testing.assert_close(model(x), after, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_training_mode_gets_fresh_bias_and_gradients_to_the_table():
    model = tiny().train()
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 32, 32))  # fill the caches
    model.train()
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for name, p in model.named_parameters():
        if name.endswith("rel_pos_bias.table"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_model_built_in_inference_mode_recomputes_the_bias():
    """Inference tensors have no version counter: the bias is not cached for them, never stale."""
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model = tiny()
        before = model(x)
        for name, p in model.named_parameters():
            if name.endswith("rel_pos_bias.table"):
                p.mul_(5.0)
        assert not torch.allclose(model(x), before)


# ---------------------------------------------------------------- ablation switches


def test_shift_off_means_no_roll_and_no_mask(monkeypatch):
    # Fast path: the cyclic shift is part of the window gather; record its shifts and the masks.
    calls = {"shifts": [], "mask": 0}
    real_order, real_mask = swin_fast.cached_window_gather, swin_fast.cached_shift_mask

    def order(grid, window, shift, device):
        calls["shifts"].append(shift)
        return real_order(grid, window, shift, device)

    def mask(*a, **k):
        calls["mask"] += 1
        return real_mask(*a, **k)

    monkeypatch.setattr(swin_fast, "cached_window_gather", order)
    monkeypatch.setattr(swin_fast, "cached_shift_mask", mask)
    shifted, plain = tiny(), tiny(shift=False)
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y_plain = plain(x)
        assert calls == {"shifts": [(0, 0)] * 4, "mask": 0}
        calls["shifts"].clear()
        y_shift = shifted(x)
    assert calls == {"shifts": [(0, 0), (2, 2)] * 2, "mask": 2}  # one SW-MSA block per stage
    assert not torch.allclose(y_plain, y_shift)


def test_shift_off_means_no_roll_and_no_mask_on_the_plain_path(monkeypatch):
    rolls, masks = [], []
    real_shift, real_mask = swin_mod.cyclic_shift, swin_mod.shifted_window_mask
    monkeypatch.setattr(swin_mod, "cyclic_shift", lambda x, s: rolls.append(s) or real_shift(x, s))
    monkeypatch.setattr(swin_mod, "shifted_window_mask", lambda *a: masks.append(a) or real_mask(*a))
    model = tiny(shift=False)
    model.set_fast_path(False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert rolls == [(0, 0)] * 4 and not masks
    rolls.clear()
    model = tiny()
    model.set_fast_path(False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert rolls == [(0, 0), (2, 2)] * 2 and len(masks) == 2


def test_window_gather_equals_roll_and_partition():
    """The fast path's one-gather shift + partition (and its inverse) equal cyclic_shift + window_partition."""
    x = torch.randn(2, 12, 10, 3)
    for window, shift in [((4, 5), (2, 2)), ((6, 5), (3, 2)), ((4, 5), (0, 0))]:
        to_windows, to_grid = window_order((12, 10), window, shift)
        rolled = cyclic_shift(x, shift)
        assert torch.equal(rolled, torch.roll(x, (-shift[0], -shift[1]), (1, 2)))
        windows = x.flatten(1, 2)[:, to_windows]
        assert torch.equal(windows, window_partition(rolled, window).flatten(1, 2))
        assert torch.equal(windows[:, to_grid], x.flatten(1, 2))


@pytest.mark.parametrize(
    "pos, has_abs, has_rel",
    [("rel", False, True), ("abs", True, False), ("none", False, False), ("abs+rel", True, True)],
)
def test_position_encoding_switch(pos, has_abs, has_rel):
    model = tiny(pos_embed=pos)
    names = [n for n, _ in model.named_parameters()]
    assert ("abs_pos_embed" in names) == has_abs
    assert any(n.endswith("rel_pos_bias.table") for n in names) == has_rel
    if has_abs:
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            before = model(x)
            model.abs_pos_embed.add_(torch.randn_like(model.abs_pos_embed))
            assert not torch.allclose(model(x), before)


def test_rel_pos_without_appearance_attends_from_the_bias_alone():
    """'rel. pos. w/o app.': Softmax(B + mask) V, no Q K^T / sqrt(d) term, no q, k projections."""
    attn = WindowAttention(16, 2, (4, 4), appearance=False).eval()
    assert attn.qkv is None and attn.v.weight.shape == (16, 16)
    mask = shifted_window_mask((8, 8), (4, 4), (2, 2))
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        attn.rel_pos_bias.table.normal_()
        weights = (attn.relative_bias()[None, None] + mask[None, :, None]).softmax(-1)  # (1, nW, h, N, N)
        v = attn.v(x).reshape(2, 4, 16, 2, 8).transpose(2, 3)  # (B, nW, h, N, d)
        ref = attn.proj((weights @ v).transpose(2, 3).reshape(2, 4, 16, 16))
        torch.testing.assert_close(attn(x, mask), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="appearance"):
        SwinConfig(appearance=False, pos_embed="abs")


@pytest.mark.slow
def test_rel_pos_without_appearance_model_trains_and_paths_agree():
    model = tiny(appearance=False)
    assert not any(".qkv." in n for n, _ in model.state_dict().items())
    plain = _plain_copy(model)
    x = torch.randn(2, 3, 30, 26)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)
    model.train()(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_none_has_no_position_signal():
    """'none': with one window over the whole map the model cannot tell where a patch is."""
    cfg = dict(img_size=8, patch_size=2, embed_dim=16, depths=(1,), num_heads=(2,), window_size=4)
    x = torch.randn(1, 3, 8, 8)
    patches = x.reshape(1, 3, 4, 2, 4, 2)  # (B, C, rows, 2, columns, 2)
    moved = patches.flip(4).roll(1, dims=2).reshape(1, 3, 8, 8)  # permute whole patches
    for pos, invariant in (("none", True), ("rel", False), ("abs", False)):
        model = tessera.create_model("swin_tiny_patch4_window7_224", pos_embed=pos, **cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("rel_pos_bias.table"):  # make the relative bias matter
                    p.normal_()
            a, b = model(x), model(moved)
        assert torch.allclose(a, b, atol=1e-5) == invariant, pos


def test_abs_pos_embed_is_resampled_at_another_size():
    model = tiny(pos_embed="abs")
    with torch.no_grad():
        y = model(torch.randn(2, 3, 45, 38))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


# ---------------------------------------------------------------- dtypes, inputs, features


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_with_shift_masks_is_finite(dtype):
    model = tiny().to(dtype)
    with torch.no_grad():
        y = model(torch.randn(2, 3, 36, 30, dtype=dtype))  # padding + shift masks
    assert y.dtype == dtype and torch.isfinite(y).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(tiny()(torch.randn(2, 3, 32, 32))).all()


def test_bad_input_is_a_value_error():
    model = tiny()
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(torch.randn(1, 3, 1, 32))


def test_config_is_validated():
    with pytest.raises(ValueError, match="divisible"):
        SwinConfig(embed_dim=30, num_heads=(4, 8, 16, 32))
    with pytest.raises(ValueError, match="equal length"):
        SwinConfig(depths=(2, 2), num_heads=(3,))
    with pytest.raises(ValueError, match="pos_embed"):
        SwinConfig(pos_embed="learned")
    with pytest.raises(ValueError, match="window_size"):
        SwinConfig(window_size=(7, 0))


@pytest.mark.slow
def test_features_at_a_padded_size():
    cfg = dict(img_size=224, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    model = tessera.create_model("swin_tiny_patch4_window7_224", **cfg).eval()
    with torch.no_grad():
        maps = model.features(torch.randn(2, 3, 250, 190))
    # 250 x 190 -> 63 x 48 patches (padded), then ceil halving.
    assert [tuple(m.shape) for m in maps] == [(2, 16, 63, 48), (2, 32, 32, 24), (2, 64, 16, 12), (2, 128, 8, 6)]
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [(16, 4), (32, 8), (64, 16), (128, 32)]


def test_forward_intermediates_agree_with_forward_features():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = model.forward_intermediates(x)[-1].permute(0, 2, 3, 1)
        torch.testing.assert_close(model.norm(last), model.forward_features(x))


# ---------------------------------------------------------------- training features


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_gradients():
    model = tiny(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


@pytest.mark.slow
def test_stochastic_depth():
    model = tiny(drop_path_rate=0.5)
    rates = [b.drop_path.p for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
    x = torch.randn(4, 3, 32, 32)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# ---------------------------------------------------------------- inference chunking


def _block_calls(model: SwinTransformer) -> list[int]:
    """Batch size of every call of the first block of each stage, recorded by forward hooks."""
    calls: list[int] = []
    for stage in model.stages:  # norm1 runs once per block call on either path
        stage.blocks[0].norm1.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


def test_inference_chunking_splits_the_batch_and_gives_the_same_output():
    model = tiny()
    x = torch.randn(5, 3, 30, 26)  # maps of 15 x 13 and 8 x 7 tokens: padded, shifted and masked
    with torch.no_grad():
        model.set_inference_chunking(None)
        calls = _block_calls(model)
        whole = model(x)
        assert calls == [5, 5]
        model.set_inference_chunking(400)  # 2 images (2 x 195 tokens) a chunk in stage 1, all 5 in stage 2
        calls.clear()
        chunked = model(x)
    assert calls == [2, 2, 1, 5]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_mlp_half_runs_in_token_chunks_when_one_image_is_larger_than_a_chunk():
    model = tiny()
    x = torch.randn(2, 3, 30, 26)  # stage 1: 15 x 13 = 195 tokens an image
    with torch.no_grad():
        model.set_inference_chunking(None)
        whole = model(x)
        model.set_inference_chunking(50)
        rows: list[int] = []
        model.stages[0].blocks[1].mlp.register_forward_hook(lambda m, args, out: rows.append(args[0][..., 0].numel()))
        chunked = model(x)
    assert rows == [50, 50, 50, 45] * 2  # one image a group, its 195 tokens in chunks of 50
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    rows.clear()
    with torch.no_grad():
        model.train()(x)  # DropPath acts per image: nothing is chunked in train mode
    assert rows == [390]


def test_training_and_autograd_are_never_chunked():
    model = tiny().train()
    model.set_inference_chunking(1)  # one image a chunk, were it inference
    calls = _block_calls(model)
    model(torch.randn(3, 3, 32, 32)).sum().backward()
    assert calls == [3, 3]
    assert all(p.grad is not None for p in model.parameters())


def test_chunking_is_for_cpu_inference_only():
    cpu, other = torch.zeros(1), torch.zeros(1, device="meta")  # meta stands in for a GPU
    fast = SwinFastPath(4096)
    with torch.no_grad():
        assert fast.chunk_size(cpu, training=False) == 4096
        assert fast.chunk_size(other, training=False) is None
        assert fast.chunk_size(cpu, training=True) is None
        assert SwinFastPath(None).chunk_size(cpu, training=False) is None
    assert fast.chunk_size(cpu, training=False) is None  # autograd on


def test_auto_chunks_follow_the_cache(monkeypatch):
    import dataclasses

    from tessera.models import swin_fast

    info = swin_fast.cpu_info()
    fast = SwinFastPath("auto")
    with torch.no_grad():
        for l3, l2, expected in ((32 * 2**20, 2**20, 4096), (8 * 2**20, 2**20, 1024), (0, 4 * 2**20, 512)):
            monkeypatch.setattr(swin_fast, "cpu_info", lambda: dataclasses.replace(info, l3_bytes=l3, l2_bytes=l2))
            for width, dtype in ((96, torch.float32), (768, torch.bfloat16)):  # the same count for every stage
                assert fast.chunk_size(torch.zeros(1, 8, 8, width, dtype=dtype), training=False) == expected
    assert swin_fast.auto_chunk_tokens(0) == 4096  # cache unknown: 32 MiB assumed
    assert swin_fast.auto_chunk_tokens(2**20) == 256  # never below 256 tokens


def test_auto_chunking_gives_the_same_output_as_none(monkeypatch):
    import dataclasses

    from tessera.models import swin_fast

    model = tiny()
    x = torch.randn(5, 3, 30, 26)
    with torch.no_grad():
        model.set_inference_chunking(None)
        whole = model(x)
        # a 1 MiB "cache": the smallest groups, 256 tokens (one 195-token image a group)
        small = dataclasses.replace(swin_fast.cpu_info(), l3_bytes=2**20)
        monkeypatch.setattr(swin_fast, "cpu_info", lambda: small)
        model.set_inference_chunking("auto")
        calls = _block_calls(model)
        chunked = model(x)
    assert calls[0] == 1  # one image (195 tokens) a group: two would exceed 256
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_inference_chunking_rejects_a_non_positive_size():
    with pytest.raises(ValueError, match="positive token count"):
        tiny().set_inference_chunking(0)
    with pytest.raises(ValueError, match="'auto' or None"):
        tiny().set_inference_chunking("big")


# ---------------------------------------------------------------- fast path == plain path


def _plain_copy(model: SwinTransformer) -> SwinTransformer:
    import copy

    plain = copy.deepcopy(model)
    plain.set_fast_path(False)
    return plain


@pytest.mark.parametrize("size", [(32, 32), (30, 26), (12, 10)])  # native; padded + masked; windows shrunk
@pytest.mark.parametrize("chunk", [None, 4096, 60])  # off; default (no chunk at this size); every kind
def test_fast_path_equals_plain_path_at_inference(size, chunk):
    torch.manual_seed(0)
    fast = tiny()
    with torch.no_grad():
        for name, p in fast.named_parameters():
            if name.endswith("rel_pos_bias.table"):
                p.normal_()
    fast.set_inference_chunking(chunk)
    plain = _plain_copy(fast)
    assert plain.fast_path is None and fast.fast_path is not None
    x = torch.randn(3, 3, *size)
    with torch.inference_mode():
        ref = plain.forward_intermediates(x)
        for a, b in zip(fast.forward_intermediates(x), ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if chunk is None:  # no chunking: the same operations on the same numbers
            assert torch.equal(fast(x), plain(x))


def test_fast_path_equals_plain_path_in_training():
    """Gathers instead of roll + partition, same DropPath draws: same outputs and gradients."""
    torch.manual_seed(0)
    fast = tiny(drop_path_rate=0.3).train()
    plain = _plain_copy(fast)
    x = torch.randn(2, 3, 30, 26)
    grads = []
    for model in (fast, plain):
        torch.manual_seed(1)
        out = model(x)
        out.square().mean().backward()
        grads.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name, g in grads[1][1].items():
        torch.testing.assert_close(grads[0][1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_fast_path_bf16_equals_plain_path():
    fast = tiny().to(torch.bfloat16)
    plain = _plain_copy(fast)
    x = torch.randn(2, 3, 30, 26, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), atol=2e-2, rtol=2e-2)


def test_plain_path_changes_no_state_in_forward():
    model = tiny()
    model.set_fast_path(False)
    before = {name: dict(vars(m)) for name, m in model.named_modules()}
    with torch.inference_mode():
        model(torch.randn(2, 3, 30, 26))
    after = {name: dict(vars(m)) for name, m in model.named_modules()}
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys(), name
        assert all(after[name][k] is v for k, v in before[name].items() if k != "_modules"), name


# ---------------------------------------------------------------- encoder API


def test_forward_tokens_are_the_normed_last_map_row_major():
    model = tiny()
    x = torch.randn(2, 3, 30, 26)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        feats = model.forward_features(x)  # (B, H, W, C)
    assert tokens.shape == (2, feats.shape[1] * feats.shape[2], 64)
    torch.testing.assert_close(tokens, feats.flatten(1, 2))
    assert model.num_prefix_tokens == 0 and model.patch_size == 2


def test_forward_intermediates_indices_norm_and_prefix_tokens():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = model.forward_intermediates(x)
        assert [m.shape for m in every] == [(2, 32, 16, 16), (2, 64, 8, 8)]
        first = model.forward_intermediates(x, indices=[0])
        torch.testing.assert_close(first[0], every[0])
        swapped = model.forward_intermediates(x, indices=[-1, 0])
        torch.testing.assert_close(swapped[0], every[1])
        (last,) = model.forward_intermediates(x, indices=1)  # an int: the last n stages
        torch.testing.assert_close(last, every[1])
        (normed,) = model.forward_intermediates(x, indices=[-1], norm=True)
        torch.testing.assert_close(normed.permute(0, 2, 3, 1), model.forward_features(x))
        (not_last,) = model.forward_intermediates(x, indices=[0], norm=True)  # norm acts on the last stage only
        torch.testing.assert_close(not_last, every[0])
        maps, prefix = model.forward_intermediates(x, return_prefix_tokens=True)
    assert [p.shape for p in prefix] == [(2, 0, 32), (2, 0, 64)]
    assert [f["num_chs"] for f in model.feature_info] == [m.shape[1] for m in maps]
    for bad in ([2], [-3], [], 0, 3):
        with pytest.raises(ValueError, match="stage"):
            model.forward_intermediates(x, indices=bad)
    assert [m.shape for m in model.features(x)] == [m.shape for m in every]


def test_mask_token_is_optional_and_checked():
    assert "mask_token" not in tiny().state_dict()  # foreign checkpoints load strictly
    model = tiny(use_mask_token=True)
    assert model.mask_token.shape == (1, 1, 32) and "mask_token" in model.no_weight_decay()
    x = torch.randn(2, 3, 30, 26)  # 15 x 13 patches
    mask = torch.zeros(2, 15 * 13, dtype=torch.bool)
    mask[0, :7] = True
    with torch.no_grad():
        out = model.forward_tokens(x, mask=mask)
        ref = model.forward_tokens(x)
        torch.testing.assert_close(out[1], ref[1])  # an unmasked image is untouched
        assert not torch.allclose(out[0], ref[0])
        z = model.embed(x, mask)
        torch.testing.assert_close(z[0, 0, :7], model.mask_token[0].expand(7, -1))
    with pytest.raises(ValueError, match=r"\(2, 195\).*torch.int64 of shape \(2, 195\)"):
        model.forward_tokens(x, mask=mask.long())
    with pytest.raises(ValueError, match=r"\(2, 195\).*\(2, 196\)"):
        model.forward_tokens(x, mask=torch.zeros(2, 196, dtype=torch.bool))
    with pytest.raises(ValueError, match="use_mask_token"):
        tiny().forward_tokens(x, mask=mask)
    with pytest.raises(ValueError, match="use_mask_token"):
        SwinConfig(use_mask_token="yes")


@pytest.mark.parametrize("fast", [True, False])
def test_batch_size_zero_gives_an_empty_batch(fast):
    model = tiny(use_mask_token=True)
    model.set_fast_path(fast)
    x = torch.randn(0, 3, 30, 26)
    with torch.no_grad():
        assert model(x).shape == (0, 1000)
        assert model.forward_tokens(x, mask=torch.zeros(0, 195, dtype=torch.bool)).shape == (0, 8 * 7, 64)
        assert [m.shape for m in model.forward_intermediates(x)] == [(0, 32, 15, 13), (0, 64, 8, 7)]
    model.train()
    assert model(x).shape == (0, 1000)


# ---------------------------------------------------------------- figures


@pytest.mark.slow
def test_swin_tiny_params_and_macs_match_the_paper():
    model = tessera.create_model("swin_tiny_patch4_window7_224")
    params, macs = tessera.profile(model, (3, 224, 224))
    assert abs(params / 28.3e6 - 1) < 0.02, params
    assert abs(macs / 4.5e9 - 1) < 0.02, macs


def test_map_order_is_merge_reverse_shift_and_crop_in_one_gather():
    """The fast path's way back from windows: window_reverse + reverse roll + crop of the padding."""
    from tessera.layers.window_attention import pad_to_windows, reverse_cyclic_shift

    x = torch.randn(2, 9, 10, 3)
    for window, shift in [((4, 4), (2, 2)), ((4, 5), (0, 0)), ((3, 5), (1, 2))]:
        padded = pad_to_windows(x, window)
        Hp, Wp = padded.shape[1:3]
        windows = window_partition(cyclic_shift(padded, shift), window)  # (B, nW, N, C)
        expected = reverse_cyclic_shift(window_reverse(windows, window, (Hp, Wp)), shift)[:, :9, :10]
        index = map_order((9, 10), (Hp, Wp), window, shift)
        assert torch.equal(windows.flatten(1, 2)[:, index].view(2, 9, 10, 3), expected)


def test_traced_shift_rule_matches_stage_window_from_one_window_up():
    """Symbolic sizes: the shift switches off at exactly one window, as `stage_window` does, without a branch."""
    for grid in [(4, 4), (4, 9), (5, 5), (12, 8)]:
        assert traced_window_and_shift(grid, (4, 4), True) == stage_window(grid, (4, 4), True)
        assert traced_window_and_shift(grid, (4, 4), False) == stage_window(grid, (4, 4), False)
