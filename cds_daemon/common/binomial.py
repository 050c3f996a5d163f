"""Exact binomial tail and the Clopper-Pearson bound, in pure Python (the daemon has no scipy).

Used by the finalisation rule (``cds_daemon.analysis.risk``), the audit of what is finalised
(``cds_daemon.review.audit``) and ``model_build``'s reports.
"""

from __future__ import annotations

import math


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
