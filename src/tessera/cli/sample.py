"""`tessera sample`: draw images from a trained diffusion run into a PNG grid.

    tessera sample --checkpoint runs/ddpm_digits --num 64 --sampler ddim --steps 50 --out grid.png
    tessera sample --checkpoint runs/ddpm_digits --sampler ddpm --seed 1 --save-images samples/

The run folder holds the exported UNet (`model.safetensors` + `config.json`,
written by `tessera fit`) and `diffusion.json` (schedule and objective). Every
image has its own noise generator seeded from (--seed, its index), so image i
is the same whatever --batch-size. Arguments and output paths are checked
before any sampling.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _check_writable_file(path: Path, flag: str) -> None:
    """Raise a ValueError unless `path` can be written as a file (its folder is created if needed)."""
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name such as {str(path / 'grid.png')!r}")
    _check_writable_dir(path.parent, flag, str(path))


def _check_writable_dir(folder: Path, flag: str, shown: str | None = None) -> None:
    existing = folder
    while not existing.exists():  # the nearest existing ancestor decides whether the folders can be made
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {shown or str(folder)!r}: cannot write into {str(existing)!r} (not a writable folder)")


def _ldm_run(argv: list[str]) -> bool:
    """Whether --checkpoint names a latent diffusion run (its export holds ldm.json)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--checkpoint=") else (argv[i + 1] if arg == "--checkpoint" and i + 1 < len(argv) else None)
        if value is not None:
            return (Path(value) / "ldm.json").is_file()
    return False


def sample(argv: list[str]) -> int:
    """draw images from a trained diffusion run (pixel or latent: --class/--prompt, --guidance) into a PNG grid"""
    if _ldm_run(argv):  # a latent diffusion run: its own options (guidance, prompts)
        from tessera.cli.ldm import sample_ldm

        return sample_ldm(argv)
    p = argparse.ArgumentParser(prog="tessera sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder written by `tessera fit` (or RUN/best)")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always takes T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"), default="leading", help="DDIM timestep grid")
    p.add_argument("--variance", choices=("fixed_small", "fixed_large"), default="fixed_small", help="DDPM sigma_t^2")
    p.add_argument("--clip-x0", action="store_true", help="clamp the predicted x0 to [-1, 1] at every step")
    p.add_argument("--eps-from-clipped-x0", action="store_true", help="DDIM with --clip-x0: step along the eps the "
                   "clipped x0 implies (diffusers' use_clipped_model_output)")
    p.add_argument("--class-label", type=int, default=None, help="class-conditional runs: one class (default: cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (does not change the images)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--save-images", default=None, metavar="DIR", help="also write each image as DIR/sample_NNNNN.png")
    p.add_argument("--scale", type=int, default=2, help="upscale the grid by this factor (nearest)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    # Everything that can be checked is checked here, before the model loads and before any sampling.
    for flag, value in (("--num", args.num), ("--batch-size", args.batch_size), ("--scale", args.scale)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.eta < 0:
        raise ValueError(f"--eta must be >= 0, got {args.eta}")
    if args.eps_from_clipped_x0 and not (args.clip_x0 and args.sampler == "ddim"):
        raise ValueError("--eps-from-clipped-x0 needs --clip-x0 and the DDIM sampler (DDPM steps through x0 alone)")
    _check_writable_file(Path(args.out), "--out")
    if args.save_images:
        _check_writable_dir(Path(args.save_images), "--save-images")

    import torch

    from tessera.diffusion.images import save_grid, save_images
    from tessera.diffusion.sample import load_diffusion_run, sample_images
    from tessera.diffusion.samplers import DDIMSampler, DDPMSampler

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, schedule, spec = load_diffusion_run(args.checkpoint)
    pred = spec.get("prediction", "eps")
    if args.sampler == "ddim":  # builds and checks the timestep grid for --steps / --spacing
        sampler = DDIMSampler(schedule, args.steps, args.eta, args.spacing, prediction=pred, clip_x0=args.clip_x0,
                              eps_from_clipped_x0=args.eps_from_clipped_x0)
    else:
        sampler = DDPMSampler(schedule, args.variance, prediction=pred, clip_x0=args.clip_x0)
    K = model.config.num_classes
    if args.class_label is not None and not 0 <= args.class_label < max(K, 1):
        raise ValueError(f"--class-label must be in [0, {K}) for this run, got {args.class_label}")

    start = time.time()
    progress = lambda done, num: print(f"sampled {done}/{num} ({time.time() - start:.1f}s)", file=sys.stderr)  # noqa: E731
    x = sample_images(model, sampler, args.num, args.seed, args.batch_size, args.class_label, progress)
    out = save_grid(x, args.out, scale=args.scale)
    print(f"wrote {out} ({args.num} images, {sampler!r}, seed {args.seed}, {time.time() - start:.1f}s)")
    if args.save_images:
        paths = save_images(x, args.save_images)
        print(f"wrote {len(paths)} images to {args.save_images}")
    return 0


COMMANDS = {"sample": sample}
