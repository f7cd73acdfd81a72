"""Fréchet distance between two sets of images, in the feature space of a classifier.

    FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2})

(Heusel et al., arXiv:1706.08500; FID when the features are Inception's pool
layer). Here the features are the penultimate layer of any tessera classifier
(`forward_head(forward_features(x), pre_logits=True)`), e.g. the digits
classifier of the default recipe. The matrix square root goes through
symmetric eigendecompositions in float64 (no scipy): C_1^{1/2} from eigh,
then the eigenvalues of the symmetric PSD C_1^{1/2} C_2 C_1^{1/2}, whose
square roots sum to tr((C_1 C_2)^{1/2}).

    python -m tessera.diffusion.metrics --run runs/ddpm_digits --classifier runs/digits_swin
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
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["classifier_features", "feature_stats", "frechet_distance", "frechet_distance_features", "sqrtm_psd"]

log = logging.getLogger(__name__)


def sqrtm_psd(C: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative eigenvalues clamped to 0)."""
    w, V = torch.linalg.eigh(C.double())
    return (V * w.clamp(min=0).sqrt()) @ V.T


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2})."""
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"mismatched statistics: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, cov {tuple(cov1.shape)} / {tuple(cov2.shape)}"
        )
    mu1, mu2, cov1, cov2 = (a.double() for a in (mu1, mu2, cov1, cov2))
    s1 = sqrtm_psd(cov1)                                               # C1^{1/2}
    m = s1 @ cov2 @ s1                                                 # C1^{1/2} C2 C1^{1/2}, symmetric PSD
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()  # tr((C1 C2)^{1/2})
    fd = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return float(fd.clamp(min=0))


def frechet_distance_features(f1: Tensor, f2: Tensor) -> float:
    """Fréchet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


@torch.no_grad()
def classifier_features(
    model: nn.Module,
    images: Tensor,
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
    img_size: int | None = None,
    batch_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """Penultimate features (N, D) and predicted classes (N,) of images (N, C, H, W) in [-1, 1].

    Images are mapped to [0, 1], resized bilinearly to `img_size` (the classifier's) and normalised
    with its mean/std, as its training data were.
    """
    model.eval()
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    feats, preds = [], []
    for lo in range(0, images.shape[0], batch_size):
        x = (images[lo : lo + batch_size].float() + 1) / 2                  # [-1, 1] -> [0, 1]
        if img_size is not None and x.shape[-1] != img_size:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(0, 1)
        x = (x - mean_t) / std_t
        pre = model.forward_head(model.forward_features(x), pre_logits=True)  # (B, D) penultimate
        feats.append(pre.float())
        preds.append(model.forward_head(model.forward_features(x)).argmax(-1))
    return torch.cat(feats), torch.cat(preds)


# ----------------------------------------------------------------------- command


def _real_digits(split: str, img_size: int) -> Tensor:
    """Held-out real digits in [-1, 1], resized through `img_size` (the generator's resolution)."""
    from tessera.data.digits import digits_split, load_digits_images

    images, labels = load_digits_images(img_size, 1)
    train, val, test = digits_split(labels)
    idx = {"train": train, "val": val, "test": test}[split]
    return images[idx] * 2 - 1


def main(argv: list[str] | None = None) -> int:
    """Fréchet distances of DDPM / DDIM samples of a run against held-out digits, plus floors."""
    from tessera.diffusion.samplers import DDIMSampler, DDPMSampler
    from tessera.diffusion.sample import load_diffusion_run
    from tessera.train.cli import load_run

    p = argparse.ArgumentParser(prog="python -m tessera.diffusion.metrics", description=main.__doc__)
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


if __name__ == "__main__":
    sys.exit(main())
