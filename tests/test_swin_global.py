"""The notes' sampled global attention (note 004): sampling rule, the attention, the fusions."""

import math

import pytest
import torch

from tessera.models.swin_global import SampledGlobalAttention, sample_tokens


def test_eval_sampling_is_strided_and_training_sampling_is_a_random_subset():
    z = torch.arange(16.0).view(1, 16, 1).repeat(2, 1, 3)
    strided = sample_tokens(z, 4, training=False)
    assert strided[0, :, 0].tolist() == [0.0, 4.0, 8.0, 12.0] and torch.equal(strided[0], strided[1])
    torch.manual_seed(0)
    rand = sample_tokens(z, 5, training=True)
    for b in range(2):
        picked = rand[b, :, 0].tolist()
        assert len(set(picked)) == 5 and set(picked) <= set(range(16))
    with pytest.raises(ValueError, match="cannot sample 17 global tokens from a stage of 16"):
        sample_tokens(z, 17, training=False)


@pytest.mark.parametrize("fusion", ["add", "max", "concat"])
def test_attention_to_sampled_tokens_matches_the_formula(fusion):
    torch.manual_seed(0)
    module = SampledGlobalAttention(in_dim=4, dim=8, num_tokens=4, fusion=fusion).eval()
    previous, z = torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 8)
    s = sample_tokens(previous.flatten(1, 2), 4, training=False)  # (B, n, C_i)
    k, v = module.key(s), module.value(s)
    q = z.flatten(1, 2)
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v  # Softmax(QK^T / sqrt(2C)) V
    a = a.view(2, 2, 2, 8)
    expected = {"add": z + a, "max": torch.maximum(z, a)}.get(fusion)
    if expected is None:
        expected = module.fuse(torch.cat([z, a], dim=-1))
    torch.testing.assert_close(module(previous, z), expected)


def test_unknown_fusion_is_a_clear_error():
    with pytest.raises(ValueError, match="global_fusion"):
        SampledGlobalAttention(4, 8, 4, fusion="mean")


SWIN = dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4), window_size=4,
            num_classes=5, drop_path_rate=0.0)


@pytest.mark.parametrize("fusion", ["add", "max", "concat"])
def test_swin_with_sampled_global_attention_trains_and_is_deterministic_in_eval(fusion):
    import tessera

    torch.manual_seed(0)
    model = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN, global_attn="sampled", global_tokens=64,
                                 global_fusion=fusion)
    assert [m.num_tokens for m in model.global_attn] == [64, 16]
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.global_attn.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        maps = model.forward_intermediates(x)
    assert [m.shape[1] for m in maps] == [16, 32, 64]


def test_global_attention_cost_is_counted_and_bad_options_are_errors():
    import tessera

    plain = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN)
    glob = tessera.create_model("swin_tiny_patch4_window7_224", **SWIN, global_attn="sampled", global_tokens=64)
    (_, m0), (_, m1) = tessera.profile(plain, (3, 32, 32)), tessera.profile(glob, (3, 32, 32))
    # stage 2: K, V of 64 tokens 16 -> 32 (2 * 64 * 16 * 32) + QK^T and AV over 64 queries (2 * 64 * 64 * 32);
    # stage 3: 16 tokens 32 -> 64 (2 * 16 * 32 * 64) + 16 queries x 16 keys (2 * 16 * 16 * 64)
    expected = 2 * 64 * 16 * 32 + 2 * 64 * 64 * 32 + 2 * 16 * 32 * 64 + 2 * 16 * 16 * 64
    assert m1 - m0 == expected
    with pytest.raises(ValueError, match=r"global_tokens must be in \[1, 256\]"):
        tessera.create_model("swin_tiny_patch4_window7_224", **SWIN, global_attn="sampled", global_tokens=300)
    with pytest.raises(ValueError, match="global_fusion"):
        tessera.create_model("swin_tiny_patch4_window7_224", **SWIN, global_attn="sampled", global_fusion="mean")
