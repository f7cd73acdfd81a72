"""MLP-Mixer: the block's equations, the paper's parameter counts, checkpoints, bad input."""

import pytest
import torch

import tessera
from tessera.io.checkpoint import CheckpointError
from tessera.models.mixer import MixerBlock, MixerConfig

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64, num_classes=5)

# Paper, Table 1: parameters in millions, without the 1000-class head.
PAPER_PARAMS = {
    "mixer_s32_224": 19,
    "mixer_s16_224": 18,
    "mixer_b32_224": 60,
    "mixer_b16_224": 59,
    "mixer_l32_224": 206,
    "mixer_l16_224": 207,
    "mixer_h14_224": 431,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_counts_match_paper(name):
    # Built on the meta device: shapes only, no memory or init time for 431M parameters.
    with torch.device("meta"):
        model = tessera.create_model(name)
    body = model.num_params(exclude_head=True) / 1e6
    assert model.num_params() - model.num_params(exclude_head=True) == 1000 * model.num_features + 1000
    # The paper prints whole millions: the count must round to its figure, and lie within 1% of it
    # except where rounding alone allows more (S/32: 18.59M, printed as 19M).
    assert round(body) == PAPER_PARAMS[name]
    assert abs(body - PAPER_PARAMS[name]) <= max(0.01 * PAPER_PARAMS[name], 0.5)


def test_block_is_token_then_channel_mixing():
    torch.manual_seed(0)
    B, S, C = 2, 6, 8
    block = MixerBlock(C, S, tokens_mlp_dim=5, channels_mlp_dim=12).eval()
    x = torch.randn(B, S, C)
    gelu = torch.nn.functional.gelu
    ln1, t, ln2, ch = block.norm1, block.mlp_tokens, block.norm2, block.mlp_channels
    # U[:, :, c] = X[:, :, c] + W2 gelu(W1 LN(X)[:, :, c] + b1) + b2 for every channel c (S -> D_S -> S).
    U = torch.empty_like(x)
    for c in range(C):
        col = ln1(x)[:, :, c]  # (B, S)
        U[:, :, c] = x[:, :, c] + gelu(col @ t.fc1.weight.T + t.fc1.bias) @ t.fc2.weight.T + t.fc2.bias
    # Y[:, s] = U[:, s] + MLP(LN(U)[:, s]) for every patch s (C -> D_C -> C).
    Y = torch.empty_like(x)
    for s in range(S):
        row = ln2(U)[:, s]
        Y[:, s] = U[:, s] + gelu(row @ ch.fc1.weight.T + ch.fc1.bias) @ ch.fc2.weight.T + ch.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(block(x), Y)
    assert t.fc1.weight.shape == (5, S) and ch.fc1.weight.shape == (12, C)


def test_gap_head_and_token_mixing_sees_all_patches():
    model = tessera.create_model("mixer_b16_224", **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (1, 16, 32)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean(1))
    # Changing one patch changes the output tokens of other patches (token mixing).
    y = x.clone()
    y[..., :8, :8] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(y)[:, -1], feats[:, -1])


def test_timm_layout_checkpoint(tmp_path):
    model = tessera.create_model("mixer_s16_224", **TINY).eval()
    state = model.state_dict()
    assert {"stem.proj.weight", "blocks.1.mlp_tokens.fc1.weight", "blocks.0.mlp_channels.fc2.bias",
            "blocks.0.norm1.weight", "norm.weight", "head.weight"} <= set(state)
    torch.save({"state_dict": state}, tmp_path / "timm_mixer.pth")
    again = tessera.create_model("mixer_s16_224", **TINY, checkpoint=tmp_path / "timm_mixer.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.mlp_tokens\.fc1\.weight' has shape \(16, 16\) in the checkpoint, \(16, 36\)"):
        tessera.create_model("mixer_s16_224", **{**TINY, "img_size": 48}, checkpoint=tmp_path / "timm_mixer.pth")


def test_bad_input_and_config():
    model = tessera.create_model("mixer_b16_224", **TINY)
    with pytest.raises(ValueError, match=r"takes 32x32 images, got 48x48.*img_size=\(48, 48\)"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MixerConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="use_mask_token=True"):
        model.forward_tokens(torch.randn(1, 3, 32, 32), mask=torch.ones(1, 16, dtype=torch.bool))
