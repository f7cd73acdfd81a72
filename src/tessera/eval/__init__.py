"""Metrics as plain functions (no training engine, no CLI): Fréchet distance, ..."""

from tessera.eval.frechet import (
    classifier_features,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    sqrtm_psd,
)

__all__ = ["classifier_features", "feature_stats", "frechet_distance", "frechet_distance_features", "sqrtm_psd"]
