"""Fréchet distance: moved to `tessera.eval.frechet`; the command is `tessera fid`. Re-exported here."""

from tessera.eval.frechet import (  # noqa: F401
    classifier_features,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    sqrtm_psd,
)

__all__ = ["classifier_features", "feature_stats", "frechet_distance", "frechet_distance_features", "sqrtm_psd"]
