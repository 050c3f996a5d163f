"""Out-of-distribution statistics: class means and a shrunk shared covariance of view-0 pooled features.

With 1280 feature dimensions and a few hundred training images the sample covariance is singular, so
it is shrunk toward a scaled identity with the Ledoit-Wolf (2004) optimal intensity; the precision
matrix (its inverse) is what the bundle stores. Scores are computed by ``cds_daemon.analysis.engine`` helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class MahalanobisStats:
    class_means: np.ndarray  # (K, D)
    precision: np.ndarray  # (D, D)
    shrinkage: float


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of already-centred rows ``x`` (n, p) and the shrinkage in [0, 1]."""
    n, p = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / p
    x2 = x**2
    delta_ = float((emp**2).sum())
    beta_ = float((x2.T @ x2).sum())
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * np.trace(emp) + p * mu**2) / p
    beta = min(beta, delta)
    shrink = 0.0 if beta <= 0 or delta <= 0 else beta / delta
    cov = (1.0 - shrink) * emp
    cov[np.diag_indices(p)] += shrink * mu
    return cov, float(shrink)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, n_classes: int) -> MahalanobisStats:
    """Per-class means and the precision of the pooled within-class covariance (Lee et al. 2018)."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    means = np.zeros((n_classes, x.shape[1]))
    for k in range(n_classes):
        means[k] = x[labels == k].mean(axis=0) if (labels == k).any() else x.mean(axis=0)
    centred = x - means[labels]
    cov, shrink = ledoit_wolf(centred)
    scale = np.trace(cov) / cov.shape[0]
    if scale <= 0:  # one image per class (smoke runs): no spread to estimate, fall back to the identity
        cov, scale = np.eye(cov.shape[0]), 1.0
    # A tiny ridge keeps the inverse finite when shrinkage came out 0 (too few samples for the estimate).
    cov[np.diag_indices(cov.shape[0])] += 1e-6 * scale
    precision = np.linalg.inv(cov)
    return MahalanobisStats(means, (precision + precision.T) / 2.0, shrink)


@dataclass(frozen=True, eq=False)
class GaussianStats:
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F)


def fit_gaussian(features: np.ndarray) -> GaussianStats:
    """Mean and precision of low-dimensional features (the stain gate's), Ledoit-Wolf shrunk on the
    standardised features so that no unit dominates the shrinkage target."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale <= 1e-9] = 1.0
    z = (x - mean) / scale
    cov, _ = ledoit_wolf(z)
    cov[np.diag_indices(cov.shape[0])] += 1e-6
    precision_z = np.linalg.inv(cov)
    precision = precision_z / scale[:, None] / scale[None, :]
    return GaussianStats(mean, (precision + precision.T) / 2.0)
