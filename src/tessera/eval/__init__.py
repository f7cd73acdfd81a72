"""Metrics as plain functions (no training engine, no CLI): Fréchet distance, k-NN and probes,
retrieval and captioning scores, segmentation and depth errors, reconstruction sharpness."""

from tessera.eval.captioning import bleu4, exact_match, token_f1
from tessera.eval.dense import depth_errors, mean_iou, pixel_accuracy, segmentation_scores
from tessera.eval.frechet import (
    classifier_features,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    sqrtm_psd,
)
from tessera.eval.knn import extract_features, knn_accuracy
from tessera.eval.probe import fine_tune, linear_probe
from tessera.eval.retrieval import recall_at_k, retrieval_recall, zero_shot_accuracy
from tessera.eval.sharpness import laplacian_energy, sharpness_ratio

__all__ = [
    "bleu4",
    "classifier_features",
    "depth_errors",
    "exact_match",
    "extract_features",
    "feature_stats",
    "fine_tune",
    "frechet_distance",
    "frechet_distance_features",
    "knn_accuracy",
    "laplacian_energy",
    "linear_probe",
    "mean_iou",
    "pixel_accuracy",
    "recall_at_k",
    "retrieval_recall",
    "segmentation_scores",
    "sharpness_ratio",
    "sqrtm_psd",
    "token_f1",
    "zero_shot_accuracy",
]
