"""`tessera sample`: draw images from a trained diffusion run into a PNG grid.

    tessera sample --checkpoint runs/ddpm_digits --num 64 --sampler ddim --steps 50 --out grid.png
    tessera sample --checkpoint runs/ddpm_digits --sampler ddpm --seed 1 --save-images samples/

The run folder holds the exported UNet (`model.safetensors` + `config.json`,
written by `tessera fit`) and `diffusion.json` (schedule and objective). The
same --seed and --batch-size give the same images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tessera.diffusion.images import save_grid, save_images
from tessera.diffusion.samplers import DDIMSampler, DDPMSampler
from tessera.diffusion.schedule import NoiseSchedule
from tessera.diffusion.unet import UNet, UNetConfig

log = logging.getLogger(__name__)

DEFAULT_SPEC: dict[str, Any] = {
    "schedule": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "prediction": "eps",
    "class_conditional": False, "num_classes": 0,
}


def load_diffusion_run(folder: str | Path) -> tuple[UNet, NoiseSchedule, dict[str, Any]]:
    """The UNet (eval mode), its NoiseSchedule and the run's diffusion spec from a run folder (or RUN/best)."""
    from tessera.io.checkpoint import load_checkpoint, read_tessera_config
    from tessera.core.base import config_from_dict

    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"checkpoint folder not found: {str(folder)!r}")
    meta = read_tessera_config(folder)
    if meta is None:
        raise ValueError(
            f"{str(folder)!r} is not an exported tessera diffusion run: expected config.json + "
            "model.safetensors (written by `tessera fit --config configs/ddpm_digits.yaml`)"
        )
    try:
        config = config_from_dict(UNetConfig, meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(folder)!r} does not hold a UNet ({meta.get('architecture')!r}): {err}") from None
    model = UNet(config)
    model.arch = meta.get("architecture", "")
    load_checkpoint(model, folder)
    spec = dict(DEFAULT_SPEC)
    for candidate in (folder / "diffusion.json", folder.parent / "diffusion.json"):
        if candidate.is_file():
            spec.update(json.loads(candidate.read_text()))
            break
    else:
        log.warning("no diffusion.json next to %s: assuming DDPM's linear schedule, T=1000, eps-prediction", folder)
    from tessera.train.diffusion import build_schedule

    schedule = build_schedule(spec["schedule"], int(spec["T"]), float(spec["beta_start"]), float(spec["beta_end"]))
    return model.eval(), schedule, spec


def sample_main(argv: list[str]) -> int:
    """`tessera sample --checkpoint RUN [--num 64] [--sampler ddim|ddpm] [--steps 50] --out grid.png`."""
    p = argparse.ArgumentParser(prog="tessera sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder written by `tessera fit` (or RUN/best)")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always takes T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"), default="leading", help="DDIM timestep grid")
    p.add_argument("--variance", choices=("fixed_small", "fixed_large"), default="fixed_small", help="DDPM sigma_t^2")
    p.add_argument("--clip-x0", action="store_true", help="clamp the predicted x0 to [-1, 1] at every step")
    p.add_argument("--class-label", type=int, default=None, help="class-conditional runs: one class (default: cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--save-images", default=None, metavar="DIR", help="also write each image as DIR/sample_NNNNN.png")
    p.add_argument("--scale", type=int, default=2, help="upscale the grid by this factor (nearest)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        raise ValueError(f"--num and --batch-size must be >= 1, got {args.num} and {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, schedule, spec = load_diffusion_run(args.checkpoint)
    pred = spec.get("prediction", "eps")
    if args.sampler == "ddim":
        sampler = DDIMSampler(schedule, args.steps, args.eta, args.spacing, prediction=pred, clip_x0=args.clip_x0)
    else:
        sampler = DDPMSampler(schedule, args.variance, prediction=pred, clip_x0=args.clip_x0)
    K = model.config.num_classes
    if args.class_label is not None and not 0 <= args.class_label < max(K, 1):
        raise ValueError(f"--class-label must be in [0, {K}) for this run, got {args.class_label}")

    c, h, w = model.input_size
    gen = torch.Generator().manual_seed(args.seed)
    images, start = [], time.time()
    for lo in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - lo)
        y = None
        if K > 0:
            y = torch.full((n,), args.class_label) if args.class_label is not None else torch.arange(lo, lo + n) % K
        with torch.inference_mode():
            images.append(sampler.sample(lambda x, t: model(x, t, y), (n, c, h, w), generator=gen))
        print(f"sampled {lo + n}/{args.num} ({time.time() - start:.1f}s)", file=sys.stderr)
    x = torch.cat(images)
    out = save_grid(x, args.out, scale=args.scale)
    print(f"wrote {out} ({args.num} images, {sampler!r}, seed {args.seed}, {time.time() - start:.1f}s)")
    if args.save_images:
        paths = save_images(x, args.save_images)
        print(f"wrote {len(paths)} images to {args.save_images}")
    return 0
