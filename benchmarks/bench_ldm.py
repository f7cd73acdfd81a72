"""Speed of the latent-generation models against their peers and their own slow paths.

    python benchmarks/bench_ldm.py                   # all three comparisons, 2 threads
    python benchmarks/bench_ldm.py --only unet --batch 64
    python benchmarks/bench_ldm.py --quick           # batch 4, one round each: a smoke run, not a measurement

1. unet: tessera's conditional LDMUNet against diffusers' UNet2DConditionModel holding the
   same weights (`tessera.diffusion.ldm_convert.to_diffusers`), one forward (inference) on the
   same (z_t, t, context); outputs must agree within 1e-4. Also the guided DDIM loop (50 steps,
   s = 3, one batched forward for both halves) per image.
2. pixel-vs-latent: one training step (forward + backward + AdamW) and one sampling step of the
   pixel-space DDPM UNet (`unet_digits`, 32x32x1) against the LDM UNet (`ldm_unet_digits`,
   8x8x4 latents, plus the first stage's decode once per sample).
3. kv-cache: next-token sampling of a whole code grid (`tokengpt_digits`, N = 64) with and
   without the KV cache (the same tokens for the same seed), and MaskGIT's 8 / 16 steps.
Timings are the fastest of interleaved rounds (benchmarks/common.py); each section's
figures are appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_times_interleaved, record  # noqa: E402


def bench_unet(batch: int, rounds: int = 7) -> None:
    import tessera
    from tessera.diffusion.ldm_convert import to_diffusers

    torch.manual_seed(0)
    model = tessera.create_model("ldm_unet_digits").eval()
    ref = to_diffusers(model).eval()
    c = model.config
    x = torch.randn(batch, c.in_chans, c.img_size, c.img_size)
    t = torch.randint(0, 1000, (batch,))
    ctx = torch.randn(batch, 1, c.context_dim)
    with torch.inference_mode():
        err = (model(x, t, ctx) - ref(x, t, encoder_hidden_states=ctx).sample).abs().max().item()

        def ours():
            return model(x, t, ctx)

        def theirs():
            return ref(x, t, encoder_hidden_states=ctx).sample

        best = best_times_interleaved({"tessera": ours, "diffusers": theirs}, rounds=rounds)
    print(f"[unet] ldm_unet_digits ({model.num_params() / 1e6:.2f}M), batch {batch}, latents {c.in_chans}x{c.img_size}x{c.img_size}, max |diff| {err:.1e}")
    print(f"  tessera   {best['tessera'] * 1e3:8.1f} ms/forward  {batch / best['tessera']:8.0f} img/s")
    print(f"  diffusers {best['diffusers'] * 1e3:8.1f} ms/forward  {batch / best['diffusers']:8.0f} img/s")
    print(f"  ratio diffusers / tessera: {best['diffusers'] / best['tessera']:.2f}")
    record([{"library": k, "ms/forward": f"{v * 1e3:.1f}", "img/s": f"{batch / v:.0f}",
             "vs diffusers": f"{best['diffusers'] / v:.2f}x", "max|diff|": f"{err:.1e}"} for k, v in best.items()],
           ["library", "ms/forward", "img/s", "vs diffusers", "max|diff|"], f"ldm_unet_digits forward, batch {batch}")


def bench_pixel_vs_latent(batch: int, rounds: int = 5) -> None:
    import tessera

    torch.manual_seed(0)
    pixel = tessera.create_model("unet_digits")
    latent = tessera.create_model("ldm_unet_digits")
    # the measurement runs' first stage: channels (16, 32), f = 2, 16x16x1 -> 8x8x4
    first = tessera.create_model(
        "autoencoder_kl_f4", img_size=16, in_chans=1, channels=(16, 32), layers_per_block=1, norm_groups=8,
        mid_attention=False, latent_channels=4, perceptual_weight=0.0,
    ).eval()
    t = torch.randint(0, 1000, (batch,))
    xp = torch.randn(batch, 1, 32, 32)  # the pixel DDPM of configs/ddpm_digits.yaml
    x16 = torch.randn(batch, 1, 16, 16)
    zl = torch.randn(batch, 4, 8, 8)
    ctx = torch.randn(batch, 1, latent.config.context_dim)
    opt_p = torch.optim.AdamW(pixel.parameters(), 1e-4)
    opt_l = torch.optim.AdamW(latent.parameters(), 1e-4)

    def step_pixel():
        loss = (pixel(xp, t) - xp).square().mean()
        opt_p.zero_grad()
        loss.backward()
        opt_p.step()

    def step_latent():
        with torch.no_grad():
            first.encode(x16)  # encoding on the fly costs this much per step (a cached latent file: nothing)
        loss = (latent(zl, t, ctx) - zl).square().mean()
        opt_l.zero_grad()
        loss.backward()
        opt_l.step()

    train = best_times_interleaved({"pixel": step_pixel, "latent": step_latent}, rounds=rounds)
    with torch.inference_mode():
        infer = best_times_interleaved(
            {"pixel": lambda: pixel(xp, t), "latent": lambda: latent(zl, t, ctx), "decode": lambda: first.decode(zl)},
            rounds=rounds,
        )
    print(f"[pixel-vs-latent] batch {batch}: unet_digits ({pixel.num_params() / 1e6:.2f}M, 32x32x1) vs ldm_unet_digits "
          f"({latent.num_params() / 1e6:.2f}M, 8x8x4)")
    print(f"  train step  pixel {train['pixel'] * 1e3:7.1f} ms   latent (incl. encode) {train['latent'] * 1e3:7.1f} ms")
    print(f"  sample step pixel {infer['pixel'] * 1e3:7.1f} ms   latent {infer['latent'] * 1e3:7.1f} ms  (+ decode once {infer['decode'] * 1e3:.1f} ms)")
    steps = 50
    print(f"  DDIM {steps} steps per image: pixel {infer['pixel'] * steps / batch * 1e3:.1f} ms, latent "
          f"{(infer['latent'] * steps + infer['decode']) / batch * 1e3:.1f} ms (no guidance; s != 0, 1 doubles the UNet part)")
    record([{"model": "pixel unet_digits", "train step ms": f"{train['pixel'] * 1e3:.1f}",
             "sample step ms": f"{infer['pixel'] * 1e3:.1f}"},
            {"model": "latent ldm_unet_digits (+ encode / decode)", "train step ms": f"{train['latent'] * 1e3:.1f}",
             "sample step ms": f"{infer['latent'] * 1e3:.1f} (+{infer['decode'] * 1e3:.1f})"}],
           ["model", "train step ms", "sample step ms"], f"pixel vs latent, batch {batch}")



def bench_kv_cache(images: int = 50, rounds: int = 3) -> None:
    import tessera
    from tessera.generative import generate, maskgit_sample

    torch.manual_seed(0)
    gpt = tessera.create_model("tokengpt_digits", vocab_size=128, dim=96, depth=3, heads=3).eval()
    mg = tessera.create_model("maskgit_digits", vocab_size=128, dim=96, depth=3, heads=3).eval()
    y = torch.arange(10).repeat_interleave(max(1, images // 10))
    same = torch.equal(
        generate(gpt, 64, y=y, generator=torch.Generator().manual_seed(0), use_cache=True),
        generate(gpt, 64, y=y, generator=torch.Generator().manual_seed(0), use_cache=False),
    )
    best = best_times_interleaved(
        {
            "cache": lambda: generate(gpt, 64, y=y, generator=torch.Generator().manual_seed(0), use_cache=True),
            "no cache": lambda: generate(gpt, 64, y=y, generator=torch.Generator().manual_seed(0), use_cache=False),
            "maskgit 8": lambda: maskgit_sample(mg, y=y, steps=8, generator=torch.Generator().manual_seed(0)),
            "maskgit 16": lambda: maskgit_sample(mg, y=y, steps=16, generator=torch.Generator().manual_seed(0)),
        },
        rounds=rounds,
    )
    images = len(y)
    print(f"[kv-cache] {images} code grids of N = 64 (dim 96, depth 3), same tokens with and without cache: {same}")
    for k, v in best.items():
        print(f"  {k:10s} {v:7.3f} s  ({v / images * 1e3:6.1f} ms/image)")
    print(f"  KV-cache speed-up: {best['no cache'] / best['cache']:.2f}x")
    record([{"sampler": k, "ms/image": f"{v / images * 1e3:.1f}"} for k, v in best.items()], ["sampler", "ms/image"],
           f"token sampling, {images} grids of 64 codes, same tokens with and without cache: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("unet", "pixel", "kv"), default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 4, one round, 10 token grids: a smoke run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else None
    batch = 4 if args.quick else args.batch
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    if args.only in (None, "unet"):
        bench_unet(batch, rounds or 7)
    if args.only in (None, "pixel"):
        bench_pixel_vs_latent(batch, rounds or 5)
    if args.only in (None, "kv"):
        bench_kv_cache(10 if args.quick else 50, rounds or 3)


if __name__ == "__main__":
    main()
