"""Sample-quality metrics: FID / sFID / IS / precision-recall (ADM definitions), FD-DINOv2 and the digits judge.

Heavy parts (the Inception network, DINOv2, scikit-learn) load on first use.
"""

from .frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    precision_recall,
    sqrtm_psd,
)

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_features",
    "inception_score",
    "precision_recall",
    "sqrtm_psd",
]
