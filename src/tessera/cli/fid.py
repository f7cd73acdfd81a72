"""`tessera fid`: score a diffusion run's samples by their Fréchet distance to held-out digits.

    tessera fid --run runs/ddpm_digits --classifier runs/digits_swin --num 256 --samplers ddpm1000,ddim50

The features are the penultimate layer of an exported tessera classifier
(`tessera fit` on the digits); the distance functions are `tessera.eval.frechet`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def _real_digits(split: str, img_size: int) -> Tensor:
    """Held-out real digits in [-1, 1], resized through `img_size` (the generator's resolution)."""
    from tessera.data.digits import digits_split, load_digits_images

    images, labels = load_digits_images(img_size, 1)
    train, val, test = digits_split(labels)
    idx = {"train": train, "val": val, "test": test}[split]
    return images[idx] * 2 - 1


def fid(argv: list[str]) -> int:
    """Fréchet distances of a diffusion run's DDPM / DDIM samples against held-out digits, plus floors"""
    import torch

    from tessera.diffusion.sample import load_diffusion_run
    from tessera.diffusion.samplers import DDIMSampler, DDPMSampler
    from tessera.eval.frechet import classifier_features, frechet_distance_features
    from tessera.train.cli import load_run

    p = argparse.ArgumentParser(prog="tessera fid", description=fid.__doc__)
    p.add_argument("--run", required=True, help="diffusion run folder")
    p.add_argument("--classifier", required=True, help="exported classifier run folder (tessera fit)")
    p.add_argument("--num", type=int, default=256, help="generated images per sampler")
    p.add_argument("--samplers", default="ddpm1000,ddim50,ddim20", help="comma list: ddpm1000, ddimN (+clip: clamp x0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--grids", default=None, help="folder for one PNG grid per sampler")
    args = p.parse_args(argv)

    clf, pre = load_run(args.classifier)
    unet, schedule, spec = load_diffusion_run(args.run)
    c, h, w = unet.input_size
    feats = lambda x: classifier_features(clf, x, pre["mean"], pre["std"], int(pre["img_size"]))  # noqa: E731

    real = _real_digits("test", h)            # held out from both the diffusion and the classifier training
    other = _real_digits("train", h)          # a second real sample: the floor
    f_real, y_real = feats(real)
    results: dict[str, Any] = {"num_generated": args.num, "num_real": int(real.shape[0]), "resolution": h}
    n = min(args.num, other.shape[0])
    f_other, _ = feats(other[torch.randperm(other.shape[0], generator=torch.Generator().manual_seed(1))[:n]])
    results["real_vs_real"] = {"fd": frechet_distance_features(f_other, f_real)}
    noise = torch.randn(args.num, c, h, w, generator=torch.Generator().manual_seed(args.seed)).clamp(-1, 1)
    results["noise"] = {"fd": frechet_distance_features(feats(noise)[0], f_real)}
    hist_real = torch.bincount(y_real, minlength=10).tolist()
    results["real_test_histogram"] = hist_real
    for name in args.samplers.split(","):
        kind, _, option = name.partition("+")      # e.g. "ddim50", "ddpm1000+clip"
        clip = option == "clip"
        if kind.startswith("ddpm"):
            sampler = DDPMSampler(schedule, prediction=spec["prediction"], clip_x0=clip)
        elif kind.startswith("ddim"):
            sampler = DDIMSampler(schedule, steps=int(kind[4:]), prediction=spec["prediction"], clip_x0=clip)
        else:
            raise ValueError(f"unknown sampler {name!r}: use ddpm1000, ddimN, optionally with +clip")
        gen = torch.Generator().manual_seed(args.seed)
        start = time.time()
        xs = []
        for lo in range(0, args.num, args.batch_size):
            nb = min(args.batch_size, args.num - lo)
            with torch.inference_mode():
                xs.append(sampler.sample(lambda x, t: unet(x, t), (nb, c, h, w), generator=gen))
        x = torch.cat(xs).clamp(-1, 1)
        seconds = time.time() - start
        f, y = feats(x)
        results[name] = {
            "fd": frechet_distance_features(f, f_real),
            "seconds": round(seconds, 1),
            "histogram": torch.bincount(y, minlength=10).tolist(),
        }
        if args.grids:
            from tessera.diffusion.images import save_grid

            save_grid(x[:64], Path(args.grids) / f"{name.replace('+', '_')}.png", scale=4 if h <= 16 else 2)
        print(f"{name}: {results[name]}", file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


COMMANDS = {"fid": fid}
