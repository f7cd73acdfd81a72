"""Dense metrics: mIoU / pixel accuracy with an ignore index, depth errors with and without alignment."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.eval.dense import (
    DepthMeter,
    SegmentationMeter,
    align_scale_shift,
    confusion_matrix,
    depth_errors,
    mean_iou,
    pixel_accuracy,
    segmentation_scores,
)


def test_miou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]]])
    # class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert mean_iou(pred, target, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(pred, target, 3) == pytest.approx(4 / 6)  # the two 255 pixels are left out
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    assert mean_iou(logits, target, 3) == mean_iou(pred, target, 3)


def test_a_class_in_neither_labels_nor_predictions_has_no_iou():
    target = pred = torch.zeros(1, 2, 2, dtype=torch.long)
    scores = segmentation_scores(confusion_matrix(pred, target, 4))
    assert scores["miou"] == 1.0 and math.isnan(scores["iou"][3])


def test_labels_out_of_range_and_shape_mismatch_are_errors():
    with pytest.raises(ValueError, match=r"\[7\] outside 0\.\.2"):
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 3)


def test_meter_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 8, 8), generator=g)
    pred = torch.randint(0, 4, (6, 8, 8), generator=g)
    meter = SegmentationMeter(4)
    meter.update(pred[:3], target[:3])
    meter.update(pred[3:], target[3:])
    assert meter.compute()["miou"] == pytest.approx(mean_iou(pred, target, 4))


def test_depth_errors_by_hand_and_unknown_pixels_skipped():
    target = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = torch.tensor([[[1.0, 3.0], [4.0, 9.0]]])
    e = depth_errors(pred, target)
    assert e["abs_rel"].item() == pytest.approx((0 + 0.5 + 0) / 3)
    assert e["rmse"].item() == pytest.approx(math.sqrt(1 / 3))
    assert e["delta1"].item() == pytest.approx(2 / 3)  # 3/2 = 1.5 is not < 1.25


def test_scale_and_shift_alignment_recovers_an_affine_prediction():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g) * 5 + 1
    pred = 0.3 * target - 2.0  # right up to scale and shift
    torch.testing.assert_close(align_scale_shift(pred, target), target, rtol=1e-5, atol=1e-5)
    aligned = depth_errors(pred, target, align=True)
    plain = depth_errors(pred, target, align=False)
    assert aligned["abs_rel"].max() < 1e-5 and aligned["delta1"].min() == 1.0
    assert plain["abs_rel"].min() > 0.5


def test_depth_meter_averages_images():
    target = torch.full((4, 4, 4), 2.0)
    pred = torch.cat([torch.full((2, 4, 4), 2.0), torch.full((2, 4, 4), 3.0)])
    meter = DepthMeter()
    meter.update(pred[:1], target[:1])
    meter.update(pred[1:], target[1:])
    scores = meter.compute()
    assert scores["abs_rel"] == pytest.approx(0.25) and scores["rmse"] == pytest.approx(0.5)
    assert scores["abs_rel_aligned"] == pytest.approx(0.0, abs=1e-6)  # constant images: shift alone fits
