"""Latent diffusion: condition encoders, classifier-free guidance, LatentDiffusion, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tessera
from tessera.diffusion import NoiseSchedule
from tessera.diffusion.conditioning import ClassEmbedder, TextEncoder, TextEncoderConfig
from tessera.diffusion.guidance import guided_denoiser
from tessera.diffusion.latent import LatentDiffusion
from tessera.diffusion.ldm_unet import LDMUNet, LDMUNetConfig

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves (and a shared CPU oversubscribes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



class StandInTokenizer(nn.Module):
    """A tiny first stage with the tokenizer protocol: 16x16x1 images <-> (B, D, 4, 4) latents (f = 4)."""

    input_size = (1, 16, 16)

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, latent_channels, 4, stride=4)
        self.dec = nn.ConvTranspose2d(latent_channels, 1, 4, stride=4)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def unet(in_chans: int = 4, context_dim: int = 8) -> LDMUNet:
    torch.manual_seed(0)
    return LDMUNet(
        LDMUNetConfig(
            img_size=4, in_chans=in_chans, widths=(8, 16), depth=1, transformer_levels=(0, 1), heads=(2, 2),
            context_dim=context_dim, norm_groups=4,
        )
    )


def ldm(num_classes: int = 3, p_uncond: float = 0.1, T: int = 10) -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(
        StandInTokenizer(), unet(), ClassEmbedder(num_classes, 8), NoiseSchedule.linear(T), p_uncond=p_uncond
    )


# ---------------------------------------------------------------- guidance


class Counting(nn.Module):
    """Wraps a denoiser, counting forwards and the rows they saw."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x, t, c):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, c)


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_guided_eps_is_eps_u_plus_s_times_the_difference_in_one_forward(s):
    net = Counting(unet().eval())
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 4, 4, generator=g), torch.tensor([1, 5, 9])
    c, null = torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, 8, generator=g)
    with torch.no_grad():
        eps_u, eps_c = net.net(x, t, null), net.net(x, t, c)
        got = guided_denoiser(net, c, null, s)(x, t)
    torch.testing.assert_close(got, eps_u + s * (eps_c - eps_u), atol=1e-5, rtol=1e-5)
    assert net.calls == 1 and net.rows == (6 if s not in (0, 1) else 3)


@pytest.mark.parametrize("s", [-0.5, float("nan"), float("inf")])
def test_bad_guidance_scale_is_refused(s):
    with pytest.raises(ValueError, match="guidance"):
        guided_denoiser(lambda *a: None, torch.zeros(1, 1, 8), torch.zeros(1, 1, 8), s)


# ---------------------------------------------------------------- encoders


def test_class_embedder_null_row_and_range_check():
    enc = ClassEmbedder(10, 8)
    assert enc(torch.tensor([0, 9])).shape == (2, 1, 8)
    torch.testing.assert_close(enc.null(2)[0, 0], enc.embed.weight[10])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        enc(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="integer"):
        enc(torch.tensor([0.5]))


def test_text_encoder_ignores_padding_keys_and_checks_rows():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=20, context_len=6, dim=16, depth=1, heads=2)).eval()
    a = torch.tensor([[1, 7, 8, 2, 0, 0]])
    b = torch.tensor([[1, 7, 8, 2, 0, 0]])
    with torch.no_grad():
        out = enc(a)
        # a [PAD] key never changes the other positions: compare with padding at another id but masked
        enc.tok_embed.weight[0].add_(5.0)
        again = enc(b)
    assert out.shape == (1, 6, 16)
    torch.testing.assert_close(out[:, :4], again[:, :4])
    with pytest.raises(ValueError, match="length 6"):
        enc(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        enc(torch.full((1, 6), 25))


def test_prompt_with_unseen_characters_is_spelt_in_bytes():
    from tessera.data.text import TextTokenizer

    tok = TextTokenizer.train([f"a handwritten {w}" for w in ("one", "two", "seven")], vocab_size=300)
    ids = tok.encode("a handwritten ☃ seven", 16)
    assert ids.shape == (16,) and tok.unk_id not in ids.tolist()
    assert tok.decode(ids) == "a handwritten ☃ seven"


# ---------------------------------------------------------------- LatentDiffusion


def test_latent_channel_mismatch_is_refused_when_built():
    with pytest.raises(ValueError, match="in_chans=3"):
        LatentDiffusion(StandInTokenizer(4), unet(in_chans=3), ClassEmbedder(3, 8), NoiseSchedule.linear(10))


def test_context_width_mismatch_is_refused_when_built():
    with pytest.raises(ValueError, match="context_dim=8"):
        LatentDiffusion(StandInTokenizer(), unet(), ClassEmbedder(3, 6), NoiseSchedule.linear(10))


def test_bad_conditions_fail_before_any_unet_forward():
    model = ldm()
    model.unet = Counting(model.unet)
    model.unet.config = model.unet.net.config
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.sample(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="guidance"):
        model.sample(torch.tensor([0, 1]), guidance=-1)
    with pytest.raises(ValueError, match="latents"):
        model.loss(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    assert model.unet.calls == 0


def test_loss_trains_unet_and_encoder_but_not_the_first_stage():
    model = ldm().train()
    assert not model.first_stage.training
    z0 = model.encode(torch.randn(4, 1, 16, 16))
    assert z0.shape == (4, 4, 4, 4)
    loss = model.loss(z0, torch.tensor([0, 1, 2, 0]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.unet.parameters())
    assert model.cond_encoder.embed.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.first_stage.parameters())


def test_condition_dropout_rate_and_null():
    model = ldm(p_uncond=0.25)
    ctx = model.context(torch.zeros(4000, dtype=torch.long))
    out = model.drop_condition(ctx, torch.Generator().manual_seed(0))
    dropped = (out - model.cond_encoder.null(1)).abs().sum(dim=(1, 2)) == 0
    kept = (out - ctx).abs().sum(dim=(1, 2)) == 0
    assert (dropped | kept).all()
    assert abs(dropped.float().mean().item() - 0.25) < 0.03


def test_scale_factor_is_one_over_latent_std():
    model = ldm()
    x = torch.randn(8, 1, 16, 16)
    s = model.estimate_scale_factor(x)
    assert abs(model.encode(x).std().item() - 1.0) < 1e-4
    torch.testing.assert_close(model.decode(model.encode(x)), model.first_stage.decode(model.first_stage.encode(x)))
    assert s > 0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_decodes_to_images_and_is_seeded(sampler):
    model = ldm(T=6)
    y = torch.tensor([0, 2])
    a = model.sample(y, guidance=3.0, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0))
    b = model.sample(y, guidance=3.0, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_ddim_with_guidance_matches_a_hand_written_loop():
    model = ldm(T=8).eval()
    y, s = torch.tensor([1, 2]), 2.0
    g = torch.Generator().manual_seed(3)
    z = model.sample(y, guidance=s, steps=2, generator=g, decode=False)
    # the same DDIM loop by hand: eps~ = eps_u + s (eps_c - eps_u), eta = 0
    sched = model.schedule
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    c, null = model.context(y), model.cond_encoder.null(2)
    grid = [4, 0]  # DDIM "leading" grid of 2 steps over T = 8
    with torch.no_grad():
        for i, t in enumerate(grid):
            tt = torch.full((2,), t)
            eu, ec = model.unet(x, tt, null), model.unet(x, tt, c)
            eps = eu + s * (ec - eu)
            ab = sched.alpha_bar[t]
            ab_prev = sched.alpha_bar[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(z, x, atol=1e-4, rtol=1e-4)


def test_text_conditioned_latent_diffusion_runs():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=30, context_len=5, dim=8, depth=1, heads=2))
    model = LatentDiffusion(StandInTokenizer(), unet(), enc, NoiseSchedule.linear(6))
    y = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    loss = model.loss(model.encode(torch.randn(2, 1, 16, 16)), y)
    assert torch.isfinite(loss)
    assert model.sample(y, guidance=2.0, steps=2).shape == (2, 1, 16, 16)


@pytest.mark.slow
def test_save_and_load_a_latent_diffusion_folder(tmp_path):
    if "autoencoder_kl_f4" not in tessera.list_models(kind="tokenizer"):
        pytest.skip("the KL autoencoder is not registered yet")
    from tessera.core import tiny_overrides

    torch.manual_seed(0)
    first = tessera.create_model("autoencoder_kl_f4", **tiny_overrides("autoencoder_kl_f4"))
    z = first.encode(torch.zeros(1, *first.input_size)).latents
    u = tessera.create_model(
        "ldm_unet_digits", **{**tiny_overrides("ldm_unet_digits"), "in_chans": z.shape[1], "img_size": z.shape[-1]}
    )
    model = LatentDiffusion(first, u, ClassEmbedder(3, u.config.context_dim), NoiseSchedule.linear(6), scale_factor=0.7)
    model.save_pretrained(tmp_path / "ldm")
    again, spec = LatentDiffusion.from_pretrained(tmp_path / "ldm")
    y = torch.tensor([0, 2])
    a = model.eval().sample(y, 2.0, steps=2, generator=torch.Generator().manual_seed(0))
    b = again.sample(y, 2.0, steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert spec["scale_factor"] == pytest.approx(0.7)
