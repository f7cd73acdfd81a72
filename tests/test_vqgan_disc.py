"""The PatchGAN discriminator's normalisation option (VQ-GAN)."""

import pytest
import torch
import torch.nn.functional as F

from tessera.tokenizers.vqgan import NLayerDiscriminator


def test_batchnorm_layout_is_tamings_and_none_keeps_the_indices():
    bn, plain = NLayerDiscriminator(1, 8, 2, "batch"), NLayerDiscriminator(1, 8, 2, "none")
    bn_keys, plain_keys = set(bn.state_dict()), set(plain.state_dict())
    assert "main.3.running_mean" in bn_keys and "main.2.bias" not in bn_keys  # taming: conv without bias, then BN
    assert not any("running" in k for k in plain_keys) and "main.2.bias" in plain_keys
    assert {k.split(".")[1] for k in bn_keys} >= {k.split(".")[1] for k in plain_keys}  # conv indices unchanged
    with pytest.raises(ValueError, match="disc_norm"):
        NLayerDiscriminator(1, 8, 2, "group")


def test_batchnorm_hides_the_contrast_of_a_batch_of_fakes_alone_and_none_does_not():
    """A batch through D on its own (as the hinge loss does): with BatchNorm a batch at half the contrast
    gives the same activations (the norm rescales it back), so D cannot see energy lost to blur;
    without it the activations halve."""
    torch.manual_seed(0)
    real = torch.rand(16, 1, 32, 32) * 2 - 1
    for norm in ("batch", "none"):
        d = NLayerDiscriminator(1, 8, 2, norm).train()
        torch.nn.init.zeros_(d.main[0].bias)  # conv -> LeakyReLU -> conv is then positively homogeneous
        for i in (0, 2):  # trained-scale weights: activations well above BatchNorm's eps
            torch.nn.init.normal_(d.main[i].weight, 0.0, 0.3)
        if norm == "none":
            torch.nn.init.zeros_(d.main[2].bias)
        feats = d.main[:4]  # conv, act, conv, norm (or identity)
        with torch.no_grad():
            a, b = feats(real), feats(0.5 * real)
        if norm == "batch":
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        else:
            torch.testing.assert_close(0.5 * a, b)
