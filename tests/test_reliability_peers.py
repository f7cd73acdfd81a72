"""Known bugs of the peers (timm, transformers, diffusers trackers) as tests tessera must pass (issue 18).

Elsewhere: fused == reference attention (test_layers.test_fused_attention_equals_explicit_softmax),
same-size position resampling is the identity (test_layers.test_resample_abs_pos_embed_keeps_prefix_and_sizes),
wrapper prefixes and content sniffing (test_reliability_io), EMA per optimizer step with buffers
(test_train.test_ema_one_update_per_optimizer_step_and_restored, test_reliability_train), every sampler
variance finite and every timestep grid valid (test_reliability_diffusion), quantizer under autocast
(test_quantizers.test_autocast_bf16_gives_the_fp32_indices), dead-code restart
(test_quantizers.test_restart_reseeds_dead_codes_from_the_batch), DINO centre over the global batch
(test_ssl_dino.test_centre_is_averaged_over_ranks_when_a_group_is_up), CFG convention
(test_ldm.test_guided_eps_is_eps_u_plus_s_times_the_difference_in_one_forward).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors import safe_open

import tessera
from tessera.core.registry import tiny_overrides
from tessera.layers.attention import attend
from tessera.layers.window_attention import MASK_VALUE, shifted_window_mask

# Derived tables that peers have shipped inside checkpoints (timm's relative_position_index,
# attn_mask; diffusers' schedule tables): recomputed at build time, never saved.
DERIVED = ("relative_position_index", "attn_mask", "shift_mask", "alphas_cumprod", "betas", "rel_index", "position_ids")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_attention_finite_in_reduced_precision_with_adversarial_logits(fused, dtype):
    """Shifted-window masks with logits near the dtype's limits, and a query whose keys are all masked."""
    g = torch.Generator().manual_seed(0)
    mask = shifted_window_mask((8, 8), (4, 4), (2, 2))  # (nW, N, N), 0 or MASK_VALUE
    nW, N, _ = mask.shape
    d = 16
    scale = 60.0 if dtype == torch.float16 else 300.0  # logits of a few 1e4: large but representable
    q = (torch.randn(nW, 2, N, d, generator=g) * scale).to(dtype)
    k = (torch.randn(nW, 2, N, d, generator=g) * scale).to(dtype)
    v = torch.randn(nW, 2, N, d, generator=g).to(dtype)
    bias = mask[:, None].clone()
    bias[:, :, 0, :] = MASK_VALUE  # a query that may attend to nothing
    out = attend(q, k, v, bias.to(dtype), fused=fused)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    # with ordinary logits the mask does mask: a masked key's value never reaches the output
    q1, k1 = torch.randn(nW, 2, N, d, generator=g).to(dtype), torch.randn(nW, 2, N, d, generator=g).to(dtype)
    v_marked = v.clone()
    masked_key = (mask[-1, 0] != 0).nonzero()[0, 0]
    v_marked[-1, :, masked_key] = 1e3
    a = attend(q1, k1, v, mask[:, None].to(dtype), fused=fused)
    b = attend(q1, k1, v_marked, mask[:, None].to(dtype), fused=fused)
    assert (a[-1, :, 0] - b[-1, :, 0]).abs().max() < 1e-2


@pytest.mark.slow
def test_derived_buffers_are_never_saved(tmp_path):
    """Every registered model's export holds exactly its learned state: no derived table in the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in tessera.list_models():
            model = tessera.create_model(name, **tiny_overrides(name))
            keys = set(model.state_dict())
            derived = [k for k in keys if k.rsplit(".", 1)[-1] in DERIVED]
            assert not derived, (name, derived)
            if not hasattr(model, "save_pretrained"):
                continue
            folder = model.save_pretrained(tmp_path / name)
            with safe_open(str(folder / "model.safetensors"), "pt") as f:
                saved = set(f.keys())
            non_persistent = {n for m_name, m in model.named_modules() for n in
                              (f"{m_name}.{b}" if m_name else b for b in m._non_persistent_buffers_set)}
            assert not saved & non_persistent, (name, sorted(saved & non_persistent)[:4])
            assert saved <= keys, (name, sorted(saved - keys)[:4])


@pytest.mark.slow
def test_training_checkpoints_load_with_weights_only(tmp_path):
    """A `tessera fit` checkpoint holds only tensors, numbers, strings and containers (no pickled objects)."""
    from test_train import tiny_argv

    from tessera.train.cli import lightning_main

    root = tmp_path / "run"
    assert lightning_main(tiny_argv(root, "--model.init_args.ema_decay", "0.9")) == 0
    for path in (root / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["global_step"] > 0 and "tessera_ema" in ckpt
