"""Class-conditional (Mondrian) split conformal prediction with the score s(x, y) = 1 - p_y(x).

Fit one threshold per class on a calibration split never used for training, then a test image's set
holds every class k with 1 - p_k <= q_k. Under exchangeability of calibration and test images *of the
same true class*, P(y in set | y = k) >= 1 - alpha for every k, averaged over calibration draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cds_daemon.analysis.numeric import conformal_scores


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected (N, K>=2) probabilities, got shape {probs.shape}")
    return probs


def _check_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match {n} rows")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    return labels


def min_calibration_size(alpha: float) -> int:
    """Smallest per-class calibration count n_k for which q_k can be below 1 (a non-trivial threshold)."""
    # ceil((n+1)(1-alpha)) <= n  <=>  n >= (1-alpha)/alpha
    return math.ceil((1.0 - alpha) / alpha - 1e-9)


def class_conditional_quantiles(probs: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """Per-class thresholds q_k (K,) on the score 1 - p_y, fitted on a calibration split.

    q_k is the ceil((n_k+1)(1-alpha))-th smallest score among the n_k calibration images of class k,
    i.e. the empirical quantile at level ceil((n_k+1)(1-alpha))/n_k (the finite-sample correction).
    When that level exceeds 1, which happens iff n_k < (1-alpha)/alpha (fewer than 9 images of the class
    at alpha=0.1) or the class is absent from the calibration split, q_k = 1.0: every score is <= 1, so
    class k is in every prediction set. Coverage then holds trivially, at the cost of uninformative sets
    for that class; see ``min_calibration_size``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    true_scores = conformal_scores(probs)[np.arange(labels.shape[0]), labels]
    quantiles = np.ones(probs.shape[1], dtype=np.float64)
    for k in range(probs.shape[1]):
        s = np.sort(true_scores[labels == k])
        n_k = s.shape[0]
        # The epsilon keeps an exactly-integer (n+1)(1-alpha) from rounding up through float error.
        rank = math.ceil((n_k + 1) * (1.0 - alpha) - 1e-9)
        if 1 <= rank <= n_k:
            quantiles[k] = min(float(s[rank - 1]), 1.0)
    return quantiles


def _check_sets(sets: np.ndarray) -> np.ndarray:
    sets = np.asarray(sets)
    if sets.ndim != 2 or sets.dtype != np.bool_:
        raise ValueError(f"expected a boolean (N, K) array of sets, got {sets.dtype} {sets.shape}")
    return sets


def coverage_by_class(
    sets: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Fraction of images of each true class whose set contains that class (NaN for an absent class).

    Keys are the class names, or the class indices as strings when no names are given.
    """
    sets = _check_sets(sets)
    labels = _check_labels(labels, sets.shape[0], sets.shape[1])
    names = list(class_names) if class_names is not None else [str(k) for k in range(sets.shape[1])]
    if len(names) != sets.shape[1]:
        raise ValueError(f"{len(names)} class names for {sets.shape[1]} classes")
    covered = sets[np.arange(labels.shape[0]), labels]
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        mask = labels == k
        out[name] = float(covered[mask].mean()) if mask.any() else float("nan")
    return out


def set_size_histogram(sets: np.ndarray) -> dict[int, int]:
    """Number of images per set size, for every size 0..K (zero counts included)."""
    sets = _check_sets(sets)
    counts = np.bincount(sets.sum(axis=1), minlength=sets.shape[1] + 1)
    return {size: int(c) for size, c in enumerate(counts)}
