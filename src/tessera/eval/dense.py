"""Dense prediction metrics: mIoU and pixel accuracy, depth AbsRel, RMSE and delta < 1.25.

Segmentation follows mmsegmentation: one confusion matrix over the whole set
(pixels labelled `ignore_index` left out), IoU_k = TP / (TP + FP + FN), mIoU the
mean over classes present in the labels or the predictions (a class absent
from both has no IoU, not a perfect one).

Depth follows Eigen et al. (2014): over the valid pixels (target > 0) of each
image, AbsRel = mean |d - d*| / d*, RMSE = sqrt(mean (d - d*)^2), delta_1 = share
of pixels with max(d / d*, d* / d) < 1.25; averaged over images. With
`align=True` the prediction is first fitted to the target by least squares,
d = s p + t per image (MiDaS, Ranftl et al. 2020), for models that predict
depth only up to scale and shift.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

IGNORE_INDEX = 255


# --------------------------------------------------------------------------- segmentation


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(K, K) int64 counts, rows the true class, columns the predicted one.

    Args:
        pred: predicted classes (B, H, W), or logits (B, K, H, W) (argmax taken).
        target: true classes (B, H, W); `ignore_index` pixels are skipped.
        num_classes: K.

    Raises:
        ValueError: for shape mismatches or target classes outside 0..K-1 (other than `ignore_index`).
    """
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(dim=1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)].unique()[:8].tolist()
        raise ValueError(f"target has classes {bad} outside 0..{num_classes - 1} (ignore_index={ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, float | list[float]]:
    """mIoU, per-class IoU (nan for a class in neither labels nor predictions), pixel and mean class accuracy."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    labelled = cm.sum(1)
    acc = torch.where(labelled > 0, tp / labelled.clamp(min=1), torch.full_like(tp, math.nan))
    total = cm.sum()
    return {
        "miou": float(iou.nanmean()) if (union > 0).any() else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_acc": float(acc.nanmean()) if (labelled > 0).any() else math.nan,
        "iou": iou.tolist(),
    }


def mean_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU of one batch of predictions (classes or logits) against labels."""
    return segmentation_scores(confusion_matrix(pred, target, num_classes, ignore_index))["miou"]  # type: ignore[return-value]


def pixel_accuracy(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of labelled pixels whose class is predicted."""
    return segmentation_scores(confusion_matrix(pred, target, num_classes, ignore_index))["pixel_acc"]  # type: ignore[return-value]


# --------------------------------------------------------------------------- depth


def align_scale_shift(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per image, s p + t with (s, t) = argmin sum over valid pixels of (s p + t - d*)^2.

    Args:
        pred: (B, H, W) or (B, 1, H, W) predictions.
        target: same shape, the reference depth.
        valid: bool mask of pixels to fit on (default target > 0).
    """
    p, d = pred.double(), target.double()
    m = (target > 0) if valid is None else valid
    m = m.double()
    dims = tuple(range(1, p.ndim))
    n = m.sum(dims).clamp(min=1)
    sp, sd = (m * p).sum(dims), (m * d).sum(dims)
    spp, spd = (m * p * p).sum(dims), (m * p * d).sum(dims)
    # Normal equations of [p 1] [s t]^T = d: a 2x2 system per image.
    det = n * spp - sp * sp
    ok = det.abs() > 1e-12
    s = torch.where(ok, (n * spd - sp * sd) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    t = torch.where(ok, (sd - s * sp) / n, sd / n)
    shape = (-1,) + (1,) * (p.ndim - 1)
    return (s.view(shape) * p + t.view(shape)).to(pred.dtype)


def depth_errors(pred: Tensor, target: Tensor, align: bool = False, eps: float = 1e-6) -> dict[str, Tensor]:
    """Per-image AbsRel, RMSE and delta < 1.25 over pixels with target > 0, each (B,).

    Args:
        pred: predicted depth (B, H, W) or (B, 1, H, W).
        target: reference depth, same shape; <= 0 marks unknown pixels.
        align: fit the prediction by least-squares scale and shift first (MiDaS).
        eps: floor of the prediction in the ratio of delta (aligned predictions may be <= 0).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target > 0
    p = align_scale_shift(pred, target, valid) if align else pred
    p, d, m = p.double().flatten(1), target.double().flatten(1), valid.flatten(1).double()
    n = m.sum(1).clamp(min=1)
    d_safe = torch.where(m > 0, d, torch.ones_like(d))
    abs_rel = (m * (p - d).abs() / d_safe).sum(1) / n
    rmse = ((m * (p - d) ** 2).sum(1) / n).sqrt()
    ratio = torch.maximum(p.clamp(min=eps) / d_safe, d_safe / p.clamp(min=eps))
    delta1 = (m * (ratio < 1.25).double()).sum(1) / n
    has = m.sum(1) > 0
    return {k: v[has] for k, v in {"abs_rel": abs_rel, "rmse": rmse, "delta1": delta1}.items()}


class SegmentationMeter:
    """Confusion counts summed over batches; `compute()` gives `segmentation_scores`."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def compute(self) -> dict[str, float | list[float]]:
        return segmentation_scores(self.confusion)


class DepthMeter:
    """Per-image depth errors (plain and aligned) summed over batches; `compute()` gives their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        for align in (False, True):
            for k, v in depth_errors(pred, target, align=align).items():
                key = f"{k}_aligned" if align else k
                self.sums[key] = self.sums.get(key, 0.0) + float(v.sum())
        self.count += int((target.flatten(1) > 0).any(1).sum())

    def compute(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}
