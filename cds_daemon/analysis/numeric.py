"""The numbers both the daemon and ``model_build`` compute: one definition each, so calibration
statistics fitted at build time and the daemon's outputs agree exactly.

- member probabilities: softmax(logits / T_member);
- ensemble logits: (basic / T_basic + premium / T_premium) / 2, probabilities softmax(. / T_ensemble);
- conformal set: class k is in the set iff 1 - p_k <= q_k (class-conditional quantiles);
- energy score: -logsumexp(raw Basic logits); Mahalanobis score: min over classes of the squared
  Mahalanobis distance of the view-0 pooled features (shared shrunk covariance); higher = less typical.

numpy only: the daemon imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) over the last axis; never overflows, and stays accurate for confident rows.

    With z shifted by its row maximum, log sum exp(z) = log1p(sum of the other terms); computing it that
    way keeps the tiny NLL of very confident correct rows (which log(1 + 1e-22) would round to 0), so the
    temperature fit still sees a slope there.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.argmax(axis=-1)[..., None]
    z = z - np.take_along_axis(z, top, axis=-1)
    others = np.exp(z)
    np.put_along_axis(others, top, 0.0, axis=-1)
    return np.asarray(z - np.log1p(others.sum(axis=-1, keepdims=True)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis; any leading shape, float64 out."""
    return np.asarray(np.exp(log_softmax(logits, temperature)))


def ensemble_logits(basic: np.ndarray, premium: np.ndarray, t_basic: float, t_premium: float) -> np.ndarray:
    """Mean of the members' temperature-scaled logits (the ensemble temperature is applied after)."""
    return (np.asarray(basic, np.float64) / t_basic + np.asarray(premium, np.float64) / t_premium) / 2.0


def energy_score(logits: np.ndarray) -> np.ndarray:
    """-logsumexp over the last axis; larger means the logits are weaker, i.e. less in-distribution."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1)
    return np.asarray(-(m + np.log(np.exp(z - m[..., None]).sum(axis=-1))))


def mahalanobis_score(features: np.ndarray, class_means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Min over classes of (x - mu_c)^T P (x - mu_c) for (N, D) or (D,) features."""
    x = np.asarray(features, dtype=np.float64)
    diff = x[..., None, :] - class_means  # (..., K, D)
    d2 = ((diff @ precision) * diff).sum(axis=-1)
    return np.asarray(d2.min(axis=-1))


@dataclass(frozen=True)
class MahalanobisTerms:
    """What :func:`mahalanobis_score` recomputes per call, computed once at load.

    (x - mu)^T P (x - mu) = x^T P x - 2 (mu^T P) x + mu^T P mu, with P symmetric: per field one
    matrix-vector product (0.17 ms) instead of K of them on the differences (1.5 ms).
    """

    precision: np.ndarray  # (D, D)
    mu_p: np.ndarray  # (K, D) = class_means @ precision
    c: np.ndarray  # (K,) = mu_k^T P mu_k

    @classmethod
    def of(cls, class_means: np.ndarray, precision: np.ndarray) -> MahalanobisTerms:
        mu = np.asarray(class_means, dtype=np.float64)
        p = np.asarray(precision, dtype=np.float64)
        mu_p = mu @ p
        return cls(precision=p, mu_p=mu_p, c=np.einsum("kd,kd->k", mu_p, mu))

    def score(self, features: np.ndarray) -> float:
        """Min over classes of the squared Mahalanobis distance of one (D,) feature vector."""
        x = np.asarray(features, dtype=np.float64)
        return float((x @ (self.precision @ x) - 2.0 * (self.mu_p @ x) + self.c).min())


def conformal_scores(probs: np.ndarray) -> np.ndarray:
    """The conformity score 1 - p_k; one place, so fitting and prediction round identically."""
    return 1.0 - np.asarray(probs, dtype=np.float64)


def prediction_sets(probs: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Boolean set membership, same shape as ``probs`` (..., K): class k is in iff 1 - p_k <= q_k.

    Sets may be empty. ``model_build.conformal`` fits the quantiles.
    """
    probs = np.asarray(probs, dtype=np.float64)
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if probs.ndim < 1 or probs.shape[-1] < 2:
        raise ValueError(f"expected probabilities over K >= 2 classes, got shape {probs.shape}")
    if quantiles.shape != (probs.shape[-1],):
        raise ValueError(f"quantiles shape {quantiles.shape} does not match {probs.shape[-1]} classes")
    return np.asarray(conformal_scores(probs) <= quantiles)
