"""Same outputs as the peer at full size (issue 18): transformers' ViT-B/16 and DeiT-B distilled with
its default LayerNorm epsilon 1e-12, read from the checkpoint (config.json or key layout).

With these weights the old fixed epsilon (1e-6) was 1.1e-4 (ViT-B) and 1.3e-4 (DeiT-B) away from the
peer's logits (magnitude ~2.3); with the checkpoint's epsilon the gap was 0.0 on this CPU. The bound
is 2e-5, five times under the old gap and below the issue's 1e-4."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import tessera

transformers = pytest.importorskip("transformers")

TOL = 2e-5


def _sharpen(model):
    """Weights at a scale where the epsilon shows (transformers' init leaves attention almost uniform)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls_name, cfg_name, name",
    [
        ("ViTForImageClassification", "ViTConfig", "vit_base_patch16_224"),
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig", "deit_base_distilled_patch16_224"),
    ],
)
@torch.no_grad()
def test_full_size_transformers_checkpoint_gives_the_peers_logits(cls_name, cfg_name, name, tmp_path):
    config = getattr(transformers, cfg_name)(num_labels=10)  # ViT-B/16 / DeiT-B at 224 px, layer_norm_eps=1e-12
    assert config.layer_norm_eps == 1e-12 and config.hidden_size == 768 and config.num_hidden_layers == 12
    hf = _sharpen(getattr(transformers, cls_name)(config))
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = hf(x).logits
    # a transformers folder: epsilon from its config.json
    ours = tessera.create_model(name, num_classes=10, checkpoint=tmp_path / "hf").eval()
    assert ours.config.norm_eps == 1e-12
    assert (ours(x) - ref).abs().max().item() < TOL
    # the weights file alone: transformers' key layout implies its default
    alone = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(alone))
    ours = tessera.create_model(name, num_classes=10, checkpoint=alone).eval()
    assert ours.config.norm_eps == 1e-12 and (ours(x) - ref).abs().max().item() < TOL
    # a value the user sets is kept (and then the logits differ measurably)
    other = tessera.create_model(name, num_classes=10, checkpoint=tmp_path / "hf", norm_eps=1e-5).eval()
    assert other.config.norm_eps == 1e-5 and (other(x) - ref).abs().max().item() > 1e-4


@pytest.mark.slow
@torch.no_grad()
def test_full_size_swin_tiny_gives_the_peers_logits(tmp_path):
    config = transformers.SwinConfig(num_labels=10)  # Swin-T: 96, (2, 2, 6, 2), window 7, 224 px
    assert config.embed_dim == 96 and tuple(config.depths) == (2, 2, 6, 2)
    hf = _sharpen(transformers.SwinForImageClassification(config))
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = tessera.create_model("swin_tiny_patch4_window7_224", num_classes=10, checkpoint=tmp_path / "hf").eval()
    assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4


@pytest.mark.slow
@torch.no_grad()
def test_full_size_ddpm_cifar10_unet_gives_the_peers_output(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from tessera.diffusion.convert import to_diffusers_config

    ours_cfg = tessera.create_model("unet_ddpm_cifar10").config  # Ho et al.'s 35.7M UNet
    ref = diffusers.UNet2DModel(**to_diffusers_config(ours_cfg))
    g = torch.Generator().manual_seed(0)
    for p in ref.parameters():
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ref.eval().save_pretrained(tmp_path / "diffusers")  # a diffusers folder: diffusion_pytorch_model.safetensors
    ours = tessera.create_model("unet_ddpm_cifar10", checkpoint=tmp_path / "diffusers").eval()
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 777])
    expected = ref(x, t).sample
    assert (ours(x, t) - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
