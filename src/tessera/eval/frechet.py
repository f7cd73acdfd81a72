"""Fréchet distance between two sets of images, in the feature space of a classifier.

    FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2})

(Heusel et al., arXiv:1706.08500; FID when the features are Inception's pool
layer). Here the features are the penultimate layer of any tessera classifier
(`forward_head(forward_features(x), pre_logits=True)`), e.g. the digits
classifier of the default recipe. The matrix square root goes through
symmetric eigendecompositions in float64 (no scipy): C_1^{1/2} from eigh,
then the eigenvalues of the symmetric PSD C_1^{1/2} C_2 C_1^{1/2}, whose
square roots sum to tr((C_1 C_2)^{1/2}).

The command that scores a diffusion run with these is `tessera fid`
(tessera.cli.fid).
"""

from __future__ import annotations

import logging

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
