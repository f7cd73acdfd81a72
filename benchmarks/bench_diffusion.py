"""Sampling speed: tessera's UNet + samplers against diffusers' UNet2DModel + schedulers, same weights.

    python benchmarks/bench_diffusion.py                       # CIFAR-10 preset, batch 16, DDIM 50 steps
    python benchmarks/bench_diffusion.py --steps 10 --threads 2 --ddpm-steps 5
    python benchmarks/bench_diffusion.py --quick               # a tiny UNet, seconds
    python benchmarks/bench_diffusion.py --dtype bf16          # bf16 weights for both networks

The tessera UNet's weights are copied into a diffusers UNet2DModel
(`tessera.diffusion.convert.to_diffusers`); both start from the same x_T and
run the same DDIM timesteps (eta = 0, "leading", no clipping) with the same
number of threads. The final samples must agree within 1e-4 (fp32; bf16: both
networks hold bf16 weights and take bf16 inputs, the samplers' arithmetic stays
fp32, as diffusers' pipelines with torch_dtype=bfloat16 do; the samples must agree
within 0.1 of their range, two roundings apart). Reported: time
per run and per step, and the ratio diffusers / tessera (> 1: tessera is
faster). DDPM's 1000-step time is extrapolated from `--ddpm-steps` timed
ancestral steps (the same network call per step), which gives DDIM's
step-count speed-up; its quality cost is measured on the digits model with
`python -m tessera.diffusion.metrics`.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_allocator_argument, apply_allocator, fastest_in_turns, record  # noqa: E402


class InDtype(torch.nn.Module):
    """A network with low-precision weights called from fp32 samplers: inputs cast in, outputs cast back."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args):
        out = self.net(x.to(self.dtype), t, *args)
        if hasattr(out, "sample"):  # diffusers' output record
            out.sample = out.sample.float()
            return out
        return out.float()


def main() -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    import tessera
    from tessera.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule
    from tessera.diffusion.convert import to_diffusers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="unet_ddpm_cifar10")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--ddpm-steps", type=int, default=3, help="DDPM steps to time (extrapolated to T)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    p.add_argument("--quick", action="store_true", help="tiny UNet (widths 32, 64) for a smoke run")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the networks' weights")
    add_allocator_argument(p)
    args = p.parse_args()
    apply_allocator(args.allocator)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = dict(widths=(32, 64), depth=1, attn_resolutions=(16,)) if args.quick else {}
    model = tessera.create_model(args.preset, **overrides).eval()
    ref = to_diffusers(model).eval()
    c, h, w = model.input_size
    shape = (args.batch, c, h, w)
    bf16 = args.dtype == "bf16"
    if bf16:  # bf16 networks inside fp32 samplers
        model, ref = InDtype(model.to(torch.bfloat16), torch.bfloat16), InDtype(ref.to(torch.bfloat16), torch.bfloat16)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    schedule = NoiseSchedule.linear()

    # ---- DDIM, full loop
    ddim = DDIMSampler(schedule, steps=args.steps, eta=0.0, spacing="leading")

    def run_tessera() -> torch.Tensor:
        with torch.inference_mode():
            return ddim.sample(model, shape, x_T=x_T.clone())

    def run_diffusers() -> torch.Tensor:
        sched = DDIMScheduler(clip_sample=False, timestep_spacing="leading", set_alpha_to_one=True)
        sched.set_timesteps(args.steps)
        x = x_T.clone()
        with torch.inference_mode():
            for t in sched.timesteps:
                x = sched.step(ref(x, t).sample, t, x).prev_sample
        return x

    with torch.inference_mode():  # warm-up: one network call each (allocator, oneDNN kernels)
        t0 = torch.full((args.batch,), 999)
        model(x_T, t0), ref(x_T, t0)
    (t_ours, x_ours), (t_ref, x_ref) = fastest_in_turns({"tessera": run_tessera, "diffusers": run_diffusers},
                                                      args.repeats).values()
    diff = (x_ours - x_ref).abs().max().item()

    # ---- DDPM, a few ancestral steps from T-1, extrapolated to all T
    ddpm = DDPMSampler(schedule, "fixed_small")
    k = args.ddpm_steps

    def ddpm_tessera() -> torch.Tensor:
        x, g = x_T.clone(), torch.Generator().manual_seed(1)
        with torch.inference_mode():
            for t in ddpm.timesteps[:k].tolist():
                x = ddpm.step(model(x, torch.full((x.shape[0],), t)), t, x, generator=g)
        return x

    def ddpm_diffusers() -> torch.Tensor:
        sched = DDPMScheduler(clip_sample=False, variance_type="fixed_small")
        x, g = x_T.clone(), torch.Generator().manual_seed(1)
        with torch.inference_mode():
            for t in sched.timesteps[:k]:
                x = sched.step(ref(x, t).sample, t, x, generator=g).prev_sample
        return x

    (d_ours, y_ours), (d_ref, y_ref) = fastest_in_turns({"tessera": ddpm_tessera, "diffusers": ddpm_diffusers},
                                                      args.repeats).values()
    ddpm_diff = (y_ours - y_ref).abs().max().item()

    with torch.inference_mode():  # one network call on the same input: the parity claim itself
        t_top = torch.full((args.batch,), schedule.T - 1)
        eps_ours, eps_ref = model(x_T, t_top).float(), ref(x_T, schedule.T - 1).sample.float()
    eps_diff = (eps_ours - eps_ref).abs().max().item()
    params = sum(p.numel() for p in model.parameters())
    # fp32: the networks agree to rounding (~1e-6 a call); DDIM divides by sqrt(alpha_bar_t) (1/0.0064 at
    # t = 999), so a trajectory amplifies that rounding ~100x and how much depends on the machine's kernels
    # (2.6e-4 after 20 steps on a Xeon whose one-call difference is 3e-6): judge the call at 1e-5 and the
    # trajectory at 1e-3.
    # bf16: errors relative to the largest value (a random UNet's DDIM samples reach |x| ~ 500), at 10%.
    call_scale = max(1.0, eps_ref.abs().max().item()) if bf16 else 1.0
    scale = max(1.0, x_ref.abs().max().item(), y_ref.abs().max().item()) if bf16 else 1.0
    call_tol, tol = (0.1, 0.1) if bf16 else (1e-5, 1e-3)
    eps_diff, diff, ddpm_diff = eps_diff / call_scale, diff / scale, ddpm_diff / scale
    kind = "relative error" if bf16 else "max |tessera - diffusers|"
    print(f"# {args.preset}{' (quick)' if args.quick else ''} {args.dtype}: {params / 1e6:.2f}M params, batch {args.batch}, "
          f"{h}x{w}, {args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'run':34s} {'steps':>6s} {'seconds':>9s} {'s/step':>8s}")
    print(f"{'tessera DDIM':34s} {args.steps:6d} {t_ours:9.2f} {t_ours / args.steps:8.3f}")
    print(f"{'diffusers UNet2DModel + DDIM':34s} {args.steps:6d} {t_ref:9.2f} {t_ref / args.steps:8.3f}")
    print(f"{'tessera DDPM (timed steps)':34s} {k:6d} {d_ours:9.2f} {d_ours / k:8.3f}")
    print(f"{'diffusers DDPM (timed steps)':34s} {k:6d} {d_ref:9.2f} {d_ref / k:8.3f}")
    print(f"ratio diffusers / tessera: DDIM {t_ref / t_ours:.2f}, DDPM {d_ref / d_ours:.2f}  (>= 1.0: tessera at least as fast)")
    ddpm_full = d_ours / k * schedule.T
    print(f"DDPM {schedule.T} steps (extrapolated): {ddpm_full:.0f} s; DDIM {args.steps}: {t_ours:.1f} s "
          f"-> speed-up {ddpm_full / t_ours:.1f}x")
    print(f"{kind}: one network call {eps_diff:.2e} ({'OK' if eps_diff <= call_tol else 'MISMATCH'} "
          f"at {call_tol:.2g}); DDIM samples {diff:.2e}, DDPM after {k} steps {ddpm_diff:.2e} "
          f"({'OK' if max(diff, ddpm_diff) <= tol else 'MISMATCH'} at {tol:.2g})")
    record([{"run": "DDIM", "steps": args.steps, "tessera s": round(t_ours, 3), "diffusers s": round(t_ref, 3),
             "ratio": round(t_ref / t_ours, 3), kind: f"{diff:.2e}"},
            {"run": "DDPM (timed steps)", "steps": k, "tessera s": round(d_ours, 3), "diffusers s": round(d_ref, 3),
             "ratio": round(d_ref / d_ours, 3), kind: f"{ddpm_diff:.2e}"}],
           ["run", "steps", "tessera s", "diffusers s", "ratio", kind],
           f"{args.preset}{' (quick)' if args.quick else ''}, batch {args.batch}, {h}x{w}, {args.dtype}")


if __name__ == "__main__":
    main()
