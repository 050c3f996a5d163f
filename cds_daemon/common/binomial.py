"""Exact binomial tail and the Clopper-Pearson bound, in pure Python (the daemon has no scipy).

Used by the finalisation rule (``cds_daemon.analysis.risk``), the audit of what is finalised
(``cds_daemon.review.audit``) and ``model_build``'s reports.
"""

from __future__ import annotations

import math

import numpy as np


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), exact (log-space terms)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
        for j in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def binomial_upper_bound(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) Clopper-Pearson upper bound of a rate with k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(100):  # bisection: P(Bin(n, p) <= k) decreases in p
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def min_sample_size(alpha: float, delta: float) -> int:
    """Fewest finalised calibration fields that could show an error rate <= alpha at level delta (no error)."""
    return math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-12)


def _log_factorials(n: int) -> np.ndarray:
    """log(j!) for j = 0..n, exact to float rounding (a cumulative sum of logs)."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binomial_cdf_many(k: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """P(Binomial(n_i, p) <= k_i) for arrays of counts, exact like :func:`binomial_cdf` (log-space terms).

    The finalisation rule tests one hypothesis per candidate threshold and resplit studies fit it thousands of
    times: one vectorised pass instead of a Python loop per threshold.
    """
    k = np.asarray(k, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    out = np.ones(k.shape, dtype=np.float64)
    if k.size == 0:
        return out
    if p >= 1.0:
        out[k < n] = 0.0
    out[k < 0] = 0.0
    live = (k >= 0) & (k < n) & (0.0 < p < 1.0)
    if not live.any():
        return out
    kk, nn = k[live], n[live]
    lf = _log_factorials(int(nn.max()))
    j = np.arange(int(kk.max()) + 1)
    log_terms = (
        lf[nn][:, None]
        - lf[j][None, :]
        - lf[np.maximum(nn[:, None] - j[None, :], 0)]
        + j[None, :] * math.log(p)
        + (nn[:, None] - j[None, :]) * math.log1p(-p)
    )
    log_terms = np.where(j[None, :] <= kk[:, None], log_terms, -np.inf)
    top = log_terms.max(axis=1)
    out[live] = np.minimum(1.0, np.exp(top) * np.exp(log_terms - top[:, None]).sum(axis=1))
    return out


def binomial_lower_bound(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) Clopper-Pearson lower bound of a rate with k events in n trials (one look)."""
    if n <= 0 or k <= 0:
        return 0.0
    lo, hi = 0.0, k / n
    for _ in range(100):  # P(Bin(n, p) >= k) = 1 - P(Bin(n, p) <= k - 1) increases in p
        mid = (lo + hi) / 2
        if 1.0 - binomial_cdf(k - 1, n, mid) < delta:
            lo = mid
        else:
            hi = mid
    return lo


def sequential_evidence(k: int, n: int, alpha: float) -> float:
    """Evidence against "the error rate is <= alpha" after k errors in n audited images, valid at every look.

    A test martingale (Ville 1939; Ramdas et al. 2023, "Game-theoretic statistics and safe anytime-valid
    inference"): the likelihood ratio of the audit outcomes under an error rate q against alpha, averaged
    over q uniform on (alpha, 1). For any true rate p <= alpha each factor has expectation <= 1, so the
    process is a non-negative supermartingale and by Ville's inequality P(it ever reaches 1/delta) <= delta,
    however often it is looked at (after every decision, every hour, for years). Closed form:
    integral_alpha^1 q^k (1-q)^(n-k) dq = B(k+1, n-k+1) P(Binomial(n+1, alpha) <= k).
    """
    if n <= 0 or not 0.0 < alpha < 1.0:
        return 1.0
    log_beta = math.lgamma(k + 1) + math.lgamma(n - k + 1) - math.lgamma(n + 2)
    tail = binomial_cdf(k, n + 1, alpha)
    if tail <= 0.0:
        return math.inf
    log_m = log_beta + math.log(tail) - math.log1p(-alpha) - k * math.log(alpha) - (n - k) * math.log1p(-alpha)
    return math.exp(min(log_m, 700.0))


def anytime_lower_bound(k: int, n: int, delta: float) -> float:
    """The largest error rate that :func:`sequential_evidence` rejects at level delta: a lower confidence
    sequence (valid at every look). ``> alpha`` exactly when the evidence against alpha reaches 1/delta."""
    if n <= 0 or k <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # the evidence falls as the hypothesised rate rises
        mid = (lo + hi) / 2
        if sequential_evidence(k, n, mid) >= 1.0 / delta:
            lo = mid
        else:
            hi = mid
    return lo
