"""Tokenizer models (VQ-VAE, dVAE, VQ-GAN, KL-AE): losses, encode/decode, errors, perceptual distances."""

from __future__ import annotations

import logging

import pytest
import torch

import tessera
from tessera.core import tiny_overrides
from tessera.tokenizers import AutoencoderKL, kl_to_standard_normal
from tessera.tokenizers.perceptual import LPIPS, ClassifierPerceptual, VGG16Features, unit_normalize
from tessera.tokenizers.vqgan import adaptive_weight, hinge_d_loss


def tiny(name: str, **kw):
    return tessera.create_model(name, **{**tiny_overrides(name), **kw})


def test_vqvae_loss_is_reconstruction_plus_vq_and_decode_of_codes():
    model = tiny("vqvae_f4").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        enc = model.encode(x)
    assert enc.codes.shape == (2, 16, 16) and enc.latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(out.loss, out.rec_loss + out.quant_loss)
    torch.testing.assert_close(out.rec_loss, torch.nn.functional.mse_loss(out.reconstruction, x))
    with torch.no_grad():
        torch.testing.assert_close(model.decode(enc.codes), out.reconstruction)
    assert 1.0 <= out.perplexity.item() <= 16 and 0 < out.usage.item() <= 1


def test_bad_inputs_are_clear_errors():
    model = tiny("vqvae_f4").eval()
    with pytest.raises(ValueError, match=r"31x32.*f=2"):
        model(torch.randn(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[16, 16\]"):
        model.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 2 codes"):
        tiny("vqvae_f4", num_codes=1)
    with pytest.raises(ValueError, match="continuous"):
        tiny("autoencoder_kl_f4").decode(torch.zeros(1, 4, 4, dtype=torch.long))
    nan = torch.randn(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        model(nan)


def test_pad_input_pads_and_crops():
    model = tiny("vqvae_f4", pad_input=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 30, 31))
    assert out.reconstruction.shape == (1, 3, 30, 31)


def test_dvae_is_deterministic_in_eval_and_samples_in_training():
    model = tiny("dvae_f4")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.eval().encode(x), model.encode(x)
        assert torch.equal(a.codes, b.codes)
        torch.testing.assert_close(model.decode(a.codes), model(x).reconstruction)
        model.train().set_temperature(1 / 16)
        assert model.quantize.temperature == 1 / 16
        s1, s2 = model(x).reconstruction, model(x).reconstruction
    assert not torch.equal(s1, s2)
    with pytest.raises(ValueError, match="temperature"):
        model.set_temperature(0)


def test_vqgan_gan_terms_and_disc_start():
    model = tiny("vqgan_f4", disc_start=5).train()
    x = torch.randn(2, 3, 32, 32)
    early = model(x, global_step=0)
    assert early.g_loss.item() == 0 and early.d_weight.item() == 0
    late = model(x, global_step=5)
    assert late.d_weight.item() > 0
    torch.testing.assert_close(late.loss, late.rec_loss + late.d_weight * late.g_loss + late.quant_loss)
    d = model.discriminator_loss(x, late.reconstruction, global_step=5)
    assert d.loss.item() > 0 and model.discriminator_loss(x, late.reconstruction, global_step=0).loss.item() == 0


def test_discriminator_warms_up_alone_before_the_generator_sees_it():
    model = tiny("vqgan_f4", disc_start=5, disc_warmup=3).train()
    x = torch.randn(2, 3, 32, 32)
    assert [model.disc_active(s) for s in (1, 2, 5)] == [False, True, True]
    assert [model.gan_active(s) for s in (2, 4, 5)] == [False, False, True]
    warm = model(x, global_step=3)
    assert warm.g_loss.item() == 0  # the generator does not see D yet ...
    assert model.discriminator_loss(x, warm.reconstruction, global_step=3).loss.item() > 0  # ... D trains


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.randn(3, 3, requires_grad=True)
    nll, g = (w * 2).sum(), (w * 0.5).sum()
    lam = adaptive_weight(nll, g, w)
    torch.testing.assert_close(lam, torch.tensor(2 * 3.0 / (0.5 * 3.0 + 1e-4)))
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0
    with torch.no_grad():
        assert adaptive_weight(w.sum(), w.sum(), w).item() == 0.0


def test_kl_autoencoder_posterior_kl_and_scaling_factor(tmp_path):
    model = tiny("autoencoder_kl_f4").eval()
    assert isinstance(model, AutoencoderKL)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        enc = model.encode(x)
        torch.testing.assert_close(enc.latents, enc.mean)
        g = torch.Generator().manual_seed(0)
        s = model.encode(x, sample=True, generator=g).latents
        assert not torch.equal(s, enc.mean)
        out = model(x)
    assert out.kl is not None and out.kl.item() > 0
    torch.testing.assert_close(out.quant_loss, 1e-6 * kl_to_standard_normal(enc.mean, enc.logvar).mean())
    torch.testing.assert_close(kl_to_standard_normal(torch.zeros(1, 2), torch.zeros(1, 2)), torch.zeros(1))
    value = model.estimate_scaling_factor(x)
    torch.testing.assert_close(torch.tensor(value), 1 / enc.mean.std(), rtol=1e-5, atol=0)
    model.save_pretrained(tmp_path)
    again = tessera.create_model("autoencoder_kl_f4", checkpoint=tmp_path)
    assert again.scaling_factor.item() == pytest.approx(value)


def test_grad_flows_to_the_perceptual_input_only():
    net = ClassifierPerceptual(torch.nn.Module())  # encoder unused below
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    n = unit_normalize(a)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(2, 3, 3))
    assert net.std.shape == (1, 1, 1, 1) and b.shape == a.shape


def test_classifier_perceptual_on_a_tessera_encoder():
    enc = tessera.create_model("vit_tiny_patch16_224", **tiny_overrides("vit_tiny_patch16_224"))
    net = ClassifierPerceptual(enc, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = net(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(net(x, x), torch.zeros(2))
    assert not any(p.requires_grad for p in net.parameters())
    model = tiny("vqgan_f4", perceptual_weight=1.0).train()
    out = model(x, perceptual=net)
    assert out.perceptual_loss is not None and out.perceptual_loss.item() > 0


def write_lpips_files(folder):
    """Random VGG16 weights in torchvision's layout (with a classifier) and lpips' lin file layout."""
    torch.manual_seed(0)
    vgg = VGG16Features()
    sd = {k: v.clone() for k, v in vgg.state_dict().items()}
    sd["classifier.0.weight"] = torch.randn(4, 4)
    torch.save(sd, folder / "vgg16.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, folder / "vgg.pth")
    return sd, lin


@pytest.mark.slow  # writes a 58 MB VGG16 file
def test_lpips_from_user_files_matches_an_explicit_computation(tmp_path):
    sd, lin = write_lpips_files(tmp_path)
    lp = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = lp(x, y)
    # explicit: conv/relu/pool by hand from the saved tensors
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    taps = {2: 0, 7: 1, 14: 2, 21: 3, 28: 4}
    pools_before = {5, 10, 17, 24}

    def feats(img):
        h, out = (img - shift) / scale, []
        for i in convs:
            if i in pools_before:
                h = torch.nn.functional.max_pool2d(h, 2)
            h = torch.relu(torch.nn.functional.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            if i in taps:
                out.append(h)
        return out

    ref = 0
    for l, (a, b) in enumerate(zip(feats(x), feats(y))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ref = ref + ((na - nb) ** 2 * lin[f"lin{l}.model.1.weight"]).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lp(x, x), torch.zeros(2))
    assert lp(x[:, :1], y[:, :1]).shape == (2,)  # grey images repeated to RGB


@pytest.mark.slow
def test_lpips_rejects_a_file_that_is_not_vgg16(tmp_path):
    torch.save({"features.0.weight": torch.randn(8, 3, 3, 3)}, tmp_path / "bad.pth")
    write_lpips_files(tmp_path)
    with pytest.raises(ValueError, match="VGG16"):
        LPIPS.from_files(tmp_path / "bad.pth", tmp_path / "vgg.pth")


def test_registered_names():
    names = tessera.list_models(kind="tokenizer")
    for expected in ("vqvae_f4", "vqvae_ema_f4", "dvae_f4", "vqgan_f4", "autoencoder_kl_f4"):
        assert expected in names
