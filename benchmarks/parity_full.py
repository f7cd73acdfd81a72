"""Checkpoint converters at the published architecture sizes: same outputs as the peer (issue 18).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/parity_full.py              # every case in turn
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/parity_full.py --only sd_unet

The tests compare each converter at small size; this script runs them once at the real
sizes. For each case the peer (diffusers / transformers) is built with the published config,
random-initialised at a scale that gives unit-size outputs (`randomize`), written in its own
format (`save_pretrained`: config.json + safetensors), read back by tessera's documented
loader for that family, and both are run on the same input:

- sd_vae:     diffusers AutoencoderKL, Stable Diffusion v1's VAE (128-256-512-512, 4 latent
              channels), 256 px: posterior mean, log-variance and decode of a latent.
              Loader: tessera.tokenizers.convert.from_diffusers(folder).
- vq_f4:      diffusers VQModel, LDM's VQ-f4 (128-256-512, 2 blocks, 3 latent channels, 8192
              codes), 256 px: pre-quantisation latents, codes, quantised latents, decode.
              Loader: tessera.tokenizers.convert.from_diffusers(folder).
- sd_unet:    diffusers UNet2DConditionModel, SD v1.5 (320-640-1280-1280, 8 heads, context
              768), 64x64x4 latent, a 77x768 context, one timestep: the eps prediction.
              Loader: tessera.diffusion.ldm_convert.load_diffusers_folder(folder).
- dpt_depth:  transformers DPTForDepthEstimation, DPT-Large (ViT-L/16, 384 px), at 384 and 480
              (positions resampled; transformers' DPT fails on non-square inputs: its neck reshapes
              the tokens to a square grid). Loader: tessera.dense.from_transformers.
- dpt_seg:    transformers DPTForSemanticSegmentation, DPT-Large ADE20k (150 classes, batch
              norm in the fusion blocks, auxiliary head), 384 px: logits and auxiliary logits.
- upernet:    transformers UperNetForSemanticSegmentation, UPerNet Swin-T (96, 2-2-6-2,
              window 7, 150 classes, auxiliary head on stage 3), 512 px: logits and auxiliary logits.
- dinov2:     transformers Dinov2Model, dinov2-base (ViT-B/14, 518 px positions, layer scale),
              at 224 (positions interpolated), 518 (native) and 308x224 (non-square): the
              last hidden state. Loader: tessera.io.convert.dinov2.load_dinov2_transformers.
- dinov2_reg: the same with transformers Dinov2WithRegistersModel (dinov2-with-registers-base:
              4 register tokens, antialiased position resampling).

`rel` is max|diff| / max|ref|; a converter is taken to be right when rel < 1e-4 (`ok`).
The table is printed and appended to benchmarks/results.jsonl (benchmarks/common.py). Peak
memory is one case at a time (the SD UNet: two copies of 860M fp32 parameters, ~7 GB).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))

TOL = 1e-4  # on max|diff| / max|ref|
COLUMNS = ["case", "output", "params_M", "max_abs_diff", "max_abs_ref", "rel", "ok", "seconds"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights that give unit-scale outputs (the peers' inits leave many outputs near 0, which would
    prove little): matrices N(0, 1/fan_in), norm and layer-scale weights N(1, 0.1), biases N(0, 0.1),
    tokens and positions N(0, 0.5); batch-norm statistics away from (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position" in name or "token" in name:
                std, mean = 0.5, 0.0
            elif p.ndim > 1:
                std, mean = p[0].numel() ** -0.5, 0.0
            elif name.endswith(("weight", "lambda1", "lambda2")):
                std, mean = 0.1, 1.0
            else:
                std, mean = 0.1, 0.0
            p.copy_(mean + std * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)


def compare(case: str, output: str, got: torch.Tensor, ref: torch.Tensor, params: float) -> dict:
    if got.shape != ref.shape:
        raise AssertionError(f"{case}/{output}: tessera's shape {tuple(got.shape)} != the peer's {tuple(ref.shape)}")
    diff = (got.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    rel = diff / max(scale, 1e-12)
    return {
        "case": case, "output": output, "params_M": params, "max_abs_diff": f"{diff:.2e}",
        "max_abs_ref": f"{scale:.3g}", "rel": f"{rel:.2e}", "ok": rel < TOL,
    }


def images(*size: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)).clamp(-2.5, 2.5)


# ------------------------------------------------------------------ tokenizers (diffusers)

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=256, scaling_factor=0.18215,
)
VQ_F4 = dict(
    in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(128, 256, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32,
    act_fn="silu", num_vq_embeddings=8192, sample_size=256,
)


def case_sd_vae(tmp: Path) -> list[dict]:
    from diffusers import AutoencoderKL

    from tessera.tokenizers.convert import from_diffusers

    peer = randomize(AutoencoderKL(**SD_VAE))
    peer.save_pretrained(tmp)
    ours = from_diffusers(tmp).eval()
    n = params_m(peer)
    x = images(256, 256)
    with torch.no_grad():
        dist = peer.encode(x).latent_dist
        enc = ours.encode(x)
        rows = [compare("sd_vae", "posterior mean", enc.mean, dist.mean, n),
                compare("sd_vae", "posterior logvar", enc.logvar, dist.logvar, n)]
        z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
        rows.append(compare("sd_vae", "decode(z)", ours.decode(z), peer.decode(z).sample, n))
    return rows


def case_vq_f4(tmp: Path) -> list[dict]:
    from diffusers import VQModel

    from tessera.tokenizers.convert import from_diffusers

    peer = randomize(VQModel(**VQ_F4))
    peer.save_pretrained(tmp)
    ours = from_diffusers(tmp).eval()
    n = params_m(peer)
    x = images(256, 256)
    with torch.no_grad():
        h = peer.encode(x).latents
        z_q, _, (_, _, idx) = peer.quantize(h)
        img = peer.decode(h).sample  # quantises h itself
        enc = ours.encode(x)
        rows = [compare("vq_f4", "pre-quant h", enc.pre_quant, h, n)]
        same = (enc.codes.flatten() == idx.flatten()).float().mean().item()
        row = compare("vq_f4", "codes (argmin)", enc.codes.flatten().float(), idx.flatten().float(), n)
        used = idx.unique().numel()
        rows.append({**row, "max_abs_diff": f"{1 - same:.2e}", "max_abs_ref": f"{used} used",
                     "rel": f"{1 - same:.2e}", "ok": same == 1.0})
        rows.append(compare("vq_f4", "quantised z_q", enc.latents, z_q, n))
        rows.append(compare("vq_f4", "decode(codes)", ours.decode(idx.view(enc.codes.shape)), img, n))
        rows.append(compare("vq_f4", "decode(encode(x))", ours.decode(enc), img, n))
    return rows


# ------------------------------------------------------------------ SD v1.5 UNet (diffusers)

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, downsample_padding=1, mid_block_scale_factor=1,
)


def case_sd_unet(tmp: Path) -> list[dict]:
    from diffusers import UNet2DConditionModel

    from tessera.diffusion.ldm_convert import load_diffusers_folder

    peer = randomize(UNet2DConditionModel(**SD15_UNET))
    n = params_m(peer)
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(1, 4, 64, 64, generator=g), torch.tensor([500]), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        ref = peer(x, t, encoder_hidden_states=ctx).sample
    peer.save_pretrained(tmp)
    del peer
    gc.collect()
    ours = load_diffusers_folder(tmp, "ldm_unet_f4").eval()
    with torch.no_grad():
        got = ours(x, t, ctx)
    return [compare("sd_unet", "eps (t=500)", got, ref, n)]


# ------------------------------------------------------------------ dense (transformers)


def dpt_large(**kw):
    from transformers import DPTConfig

    return DPTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=384,
        patch_size=16, layer_norm_eps=1e-12, qkv_bias=True, backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256, readout_type="project", **kw,
    )


def case_dpt_depth(tmp: Path) -> list[dict]:
    from transformers import DPTForDepthEstimation

    from tessera.dense import from_transformers

    peer = randomize(DPTForDepthEstimation(dpt_large()))
    peer.save_pretrained(tmp)
    ours = from_transformers(tmp).eval()
    n, rows = params_m(peer), []
    for h, w in ((384, 384), (480, 480)):  # transformers' DPT reshapes its tokens to a square grid
        x = images(h, w)
        with torch.no_grad():
            rows.append(compare("dpt_depth", f"depth {h}x{w}", ours(x), peer(pixel_values=x).predicted_depth[:, None], n))
    return rows


def case_dpt_seg(tmp: Path) -> list[dict]:
    from transformers import DPTForSemanticSegmentation

    from tessera.dense import from_transformers

    cfg = dpt_large(num_labels=150, use_batch_norm_in_fusion_residual=True, use_auxiliary_head=True)
    peer = randomize(DPTForSemanticSegmentation(cfg))
    peer.save_pretrained(tmp)
    ours = from_transformers(tmp).eval()
    n = params_m(peer)
    x = images(384, 384)
    with torch.no_grad():
        out = peer(pixel_values=x, output_hidden_states=True)
        y, aux = ours.forward_with_aux(x)
        hidden = [h for i, h in enumerate(out.hidden_states[1:]) if i in peer.config.backbone_out_indices]
        ref_aux = peer.auxiliary_head(peer.neck(hidden)[-1])  # transformers returns no auxiliary logits
        ref_aux = torch.nn.functional.interpolate(ref_aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return [compare("dpt_seg", "logits 384", y, out.logits, n), compare("dpt_seg", "aux logits 384", aux, ref_aux, n)]


def upernet_swin_tiny():
    """openmmlab/upernet-swin-tiny's config (transformers' convert_swin_upernet_to_pytorch.py)."""
    from transformers import SwinConfig, UperNetConfig

    backbone = SwinConfig(
        image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return UperNetConfig(backbone_config=backbone, hidden_size=512, auxiliary_in_channels=384,
                         auxiliary_channels=256, num_labels=150)


def case_upernet(tmp: Path) -> list[dict]:
    from transformers import UperNetForSemanticSegmentation

    from tessera.dense import from_transformers

    peer = randomize(UperNetForSemanticSegmentation(upernet_swin_tiny()))
    peer.save_pretrained(tmp)
    ours = from_transformers(tmp).eval()
    n = params_m(peer)
    x = images(512, 512)
    with torch.no_grad():
        ref = peer(pixel_values=x).logits
        ref_aux = torch.nn.functional.interpolate(
            peer.auxiliary_head(peer.backbone(x).feature_maps), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        y, aux = ours.forward_with_aux(x)
    return [compare("upernet", "logits 512", y, ref, n), compare("upernet", "aux logits 512", aux, ref_aux, n)]


# ------------------------------------------------------------------ DINOv2 (transformers)


DINOV2_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=518,
                   patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6)  # facebook/dinov2-base


def _dinov2(case: str, peer: torch.nn.Module, tmp: Path) -> list[dict]:
    from tessera.io.convert.dinov2 import load_dinov2_transformers

    randomize(peer).save_pretrained(tmp)
    ours = load_dinov2_transformers(tmp)
    n, rows = params_m(peer), []
    for h, w in ((224, 224), (518, 518), (308, 224)):  # interpolated positions, native 37 x 37, non-square
        x = images(h, w)
        with torch.no_grad():
            ref = peer(pixel_values=x).last_hidden_state
            rows.append(compare(case, f"tokens {h}x{w}", ours.forward_tokens(x), ref, n))
    return rows


def case_dinov2(tmp: Path) -> list[dict]:
    from transformers import Dinov2Config, Dinov2Model

    return _dinov2("dinov2", Dinov2Model(Dinov2Config(**DINOV2_BASE)), tmp)


def case_dinov2_reg(tmp: Path) -> list[dict]:
    """facebook/dinov2-with-registers-base: 4 register tokens, positions resampled with antialiasing."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(**DINOV2_BASE, num_register_tokens=4)
    return _dinov2("dinov2_reg", Dinov2WithRegistersModel(cfg), tmp)


CASES: dict[str, Callable[[Path], list[dict]]] = {
    "sd_vae": case_sd_vae,
    "vq_f4": case_vq_f4,
    "sd_unet": case_sd_unet,
    "dpt_depth": case_dpt_depth,
    "dpt_seg": case_dpt_seg,
    "upernet": case_upernet,
    "dinov2": case_dinov2,
    "dinov2_reg": case_dinov2_reg,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(CASES), metavar="NAME",
                   help=f"run only this case (repeatable); one of {', '.join(CASES)}; default: all")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core of a shared machine)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    args.cases = [c for c in CASES if args.only is None or c in args.only]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from common import print_table

    rows, failed = [], []
    for name in args.cases:
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"parity_{name}_") as tmp:
                case_rows = CASES[name](Path(tmp))
        except Exception as e:  # a case that cannot load is a finding: report it and go on
            case_rows = [{"case": name, "output": f"FAILED: {type(e).__name__}: {e}"[:200], "ok": False}]
        seconds = round(time.perf_counter() - start, 1)
        for r in case_rows:
            r["seconds"] = seconds
            print("  ".join(f"{c}={r.get(c, '')}" for c in COLUMNS), flush=True)
        rows += case_rows
        failed += [r for r in case_rows if not r["ok"]]
        gc.collect()
    print()
    print_table(rows, COLUMNS, note=f"issue 18 full-size converter parity; {platform.processor() or platform.machine()}; "
                f"{args.threads} thread(s); rel = max|diff| / max|ref|, ok when rel < {TOL}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
