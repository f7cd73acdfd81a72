"""Tokenizer checkpoints from diffusers (VQModel, AutoencoderKL) and taming-transformers (VQGAN)."""

from __future__ import annotations

import pytest
import torch

import tessera
from tessera.tokenizers.convert import from_diffusers



def _diffusers():
    return pytest.importorskip("diffusers")

SMALL = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.mark.slow  # diffusers' import alone takes seconds
def test_diffusers_vqmodel_folder(tmp_path):
    torch.manual_seed(0)
    diffusers = _diffusers()
    peer = diffusers.VQModel(**SMALL, latent_channels=4, num_vq_embeddings=16, sample_size=16, scaling_factor=0.5).eval()
    peer.quantize.embedding.weight.data.normal_()  # spread codes so that many are chosen
    peer.save_pretrained(tmp_path)
    ours = from_diffusers(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = peer.encode(x).latents
        z_q, loss, (_, _, idx) = peer.quantize(h)
        img = peer.decode(h).sample
        enc = ours.encode(x)
        out = ours(x)
        mine = ours.quantize(enc.pre_quant)
    torch.testing.assert_close(enc.pre_quant, h, atol=1e-4, rtol=1e-4)
    assert torch.equal(enc.codes.flatten(), idx.flatten())
    assert enc.codes.unique().numel() > 2
    torch.testing.assert_close(enc.latents, z_q, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.loss, loss, atol=1e-4, rtol=1e-4)  # legacy beta placement
    torch.testing.assert_close(ours.decode(enc), img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.decode(enc.codes), img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.reconstruction, img, atol=1e-4, rtol=1e-4)
    assert ours.scaling_factor.item() == 0.5 and ours.config.beta_placement == "legacy"


@pytest.mark.slow
def test_diffusers_autoencoder_kl_folder(tmp_path):
    torch.manual_seed(0)
    diffusers = _diffusers()
    peer = diffusers.AutoencoderKL(**SMALL, latent_channels=4, sample_size=16, scaling_factor=0.25).eval()
    peer.save_pretrained(tmp_path)
    ours = from_diffusers(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        dist = peer.encode(x).latent_dist
        enc = ours.encode(x)
        torch.testing.assert_close(enc.mean, dist.mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(enc.logvar, dist.logvar, atol=1e-4, rtol=1e-4)
        z = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(ours.decode(z), peer.decode(z).sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(x).reconstruction, peer(x, sample_posterior=False).sample, atol=1e-4, rtol=1e-4)
    assert ours.scaling_factor.item() == 0.25


@pytest.mark.slow
def test_diffusers_unsupported_blocks_are_named(tmp_path):
    diffusers = _diffusers()
    peer = diffusers.VQModel(
        **{**SMALL, "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")}, latent_channels=4,
        num_vq_embeddings=16,
    )
    peer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
        from_diffusers(tmp_path)


def taming_state_dict(model) -> dict:
    """A taming-transformers VQGAN checkpoint: same shapes, taming's key names, LPIPS and logvar in `loss.`."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("discriminator."):
            sd["loss." + k] = v.clone()
        elif k == "quantize.codebook":
            sd["quantize.embedding.weight"] = v.clone()
        elif k.startswith("quantize.") or k == "scaling_factor":
            continue  # tessera's bookkeeping buffers: not in taming's files
        else:
            sd[k] = v.clone()
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    sd["loss.logvar"] = torch.zeros(())
    return sd


def test_taming_vqgan_checkpoint(tmp_path):
    torch.manual_seed(0)
    kw = tessera.core.tiny_overrides("vqgan_f4")
    source = tessera.create_model("vqgan_f4", **kw).eval()
    for p in source.parameters():
        p.data.normal_(0, 0.1)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": taming_state_dict(source), "global_step": 10}, path)
    loaded = tessera.create_model("vqgan_f4", checkpoint=path, **kw).eval()
    for k, v in source.state_dict().items():
        if not k.startswith("quantize.") or k == "quantize.codebook":
            assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).reconstruction, source(x).reconstruction)
    # the generator alone (no discriminator) loads the same file
    vq = tessera.create_model("vqvae_f4", checkpoint=path, **tessera.core.tiny_overrides("vqvae_f4"))
    assert torch.equal(vq.quantize.codebook, source.quantize.codebook)
