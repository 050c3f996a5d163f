"""Finalisation without review, with a finite-sample guarantee on the error among what is finalised.

A field is *finalised* (its AI result stands without a cytopathologist) when no other referral reason
applies (it is a *candidate*: predicted Benign or Malignant, one-class conformal set, members agree, in
distribution, good quality) and its *finalisation confidence* is at least a threshold ``t``: the lower of
the calibrated ensemble confidence and the calibrated Basic confidence (:func:`finalisation_confidence`). ``t`` is
fitted on the calibration split so that

    P( error rate among finalised fields > alpha ) <= delta,

by Learn then Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021) with fixed-sequence testing:
for thresholds ``t`` running down the distinct candidate confidences, the null hypothesis
H_t: "the error rate among fields finalised at t exceeds alpha" is tested with the exact binomial
tail p-value ``P(Binomial(n_t, alpha) <= k_t)`` (n_t finalised calibration fields, k_t of them wrong);
the sequence stops at the first H_t it cannot reject at level delta, and the threshold is the last
one rejected. Testing in a fixed order at full level delta controls the chance of any false rejection
at delta, hence the guarantee for the threshold chosen.

Where the sequence starts: a hypothesis can only be rejected once n_t reaches
``min_sample_size(alpha, delta)`` (with no error at all, (1 - alpha)^n <= delta), so the sequence
starts at the highest threshold that finalises that many calibration candidates. That start is chosen
from the confidences alone, never from the labels (the "learn" step of LTT uses no outcome), so the
p-values of the tested hypotheses keep their meaning; ``tests/unit/analysis/test_risk.py`` checks
the guarantee by simulation where the true error rates are known.

Pure Python and numpy (no scipy): the daemon refits the rule from the calibration scores stored in
the bundle when a site sets its own alpha or delta.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cds_daemon.common.binomial import binomial_cdf_many, binomial_upper_bound, min_sample_size


def finalisation_confidence(ensemble: Any, basic: Any) -> Any:
    """The score the finalisation threshold applies to: both the ensemble and the whole-image Basic model
    must be sure (they agree on the class, or the field is referred anyway).

    Why not the ensemble's confidence alone: on the paper's logits (``evaluate-logits``, rule fitted on
    val at alpha 0.02, delta 0.1), the ensemble alone finalises 48.9% of test with 2 errors, one a
    Benign/Malignant swap; the lower of the two finalises 45.6% with 1 error and no swap.
    """
    return np.minimum(ensemble, basic)


METHOD = (
    "Learn then Test, fixed sequence over decreasing calibrated-confidence thresholds, "
    "exact binomial tail p-value; start where n >= min_sample_size(alpha, delta), chosen without labels"
)


@dataclass(frozen=True)
class FinalisationRule:
    alpha: float
    delta: float
    threshold: float | None  # None: nothing can be finalised with this guarantee (every field is referred)
    n_calibration: int
    n_candidates: int
    n_finalised: int  # calibration fields the threshold finalises
    errors: int  # ... of which wrong
    upper_bound: float  # (1 - delta) Clopper-Pearson bound of their error rate
    method: str = METHOD

    def finalises(self, confidence: float) -> bool:
        return self.threshold is not None and confidence >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_finalisation(
    confidence: np.ndarray, errors: np.ndarray, candidates: np.ndarray, *, alpha: float, delta: float
) -> FinalisationRule:
    """The lowest threshold the fixed sequence reaches on the calibration split (see the module doc)."""
    if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
        raise ValueError(f"alpha and delta must lie in (0, 1), got {alpha}, {delta}")
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = np.asarray(errors, dtype=bool)
    cand = np.asarray(candidates, dtype=bool)
    if not conf.shape == wrong.shape == cand.shape or conf.ndim != 1:
        raise ValueError("confidence, errors and candidates must be 1-D arrays of one length")
    order = np.argsort(-conf[cand], kind="stable")
    scores, mistakes = conf[cand][order], wrong[cand][order]
    n_min = min_sample_size(alpha, delta)
    best: tuple[float, int, int] | None = None
    # Every candidate with the next score value joins at once: a threshold finalises ties together. The tested
    # thresholds are the ends of the groups of equal scores that finalise at least n_min fields, in order.
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) + 1 if scores.size else np.zeros(0, np.int64)
    ends = ends[ends >= n_min]
    ks = np.cumsum(mistakes)[ends - 1] if ends.size else ends
    start, chunk = 0, 64
    while start < ends.size:  # in chunks: the sequence usually stops early, and error counts stay small there
        part = slice(start, start + chunk)
        rejected = binomial_cdf_many(ks[part], ends[part], alpha) <= delta
        passed = int(np.argmin(rejected)) if not rejected.all() else rejected.size
        if passed:
            last = start + passed - 1
            best = (float(scores[int(ends[last]) - 1]), int(ends[last]), int(ks[last]))
        if passed < rejected.size:
            break
        start, chunk = start + chunk, chunk * 2
    threshold, n_final, k_final = (None, 0, 0) if best is None else best
    return FinalisationRule(
        alpha=alpha,
        delta=delta,
        threshold=threshold,
        n_calibration=int(conf.size),
        n_candidates=int(cand.sum()),
        n_finalised=n_final,
        errors=k_final,
        upper_bound=binomial_upper_bound(k_final, n_final, delta),
    )


def rule_from_manifest(
    block: dict[str, Any], *, alpha: float | None = None, delta: float | None = None
) -> FinalisationRule:
    """The bundle's rule, or the same procedure refitted on its calibration data for another alpha or delta."""
    want_alpha = float(block["alpha"]) if alpha is None else alpha
    want_delta = float(block["delta"]) if delta is None else delta
    if (want_alpha, want_delta) != (float(block["alpha"]), float(block["delta"])):
        data = block["calibration"]
        return fit_finalisation(
            np.asarray(data["confidence"], np.float64),
            np.asarray(data["error"], bool),
            np.asarray(data["candidate"], bool),
            alpha=want_alpha,
            delta=want_delta,
        )
    fields = {k: block[k] for k in FinalisationRule.__dataclass_fields__ if k in block}
    return FinalisationRule(**fields)


@dataclass(frozen=True)
class PowerPoint:
    """Expected share finalised when a rule is fitted on ``size`` fields like these (bootstrap)."""

    size: int
    coverage_mean: float
    coverage_p10: float
    coverage_p50: float
    error_mean: float  # error among what the fitted rules finalise, measured on the pool itself

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def power_curve(
    confidence: np.ndarray,
    errors: np.ndarray,
    candidates: np.ndarray,
    sizes: tuple[int, ...],
    *,
    alpha: float,
    delta: float,
    reps: int = 200,
    seed: int = 0,
) -> list[PowerPoint]:
    """Coverage against calibration size: draw ``size`` fields with replacement from the pool, fit the rule on
    them, and measure the share of the whole pool it finalises. Larger pools than the one at hand are
    projected from its own distribution (``evaluate-logits --power``, ``cds-daemon calibration status``).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = np.asarray(errors, dtype=bool)
    cand = np.asarray(candidates, dtype=bool)
    if conf.size == 0:
        return [PowerPoint(size, 0.0, 0.0, 0.0, 0.0) for size in sizes]
    rng = np.random.default_rng(seed)
    order = np.argsort(-conf)
    sorted_conf = conf[order]
    cum_final = np.cumsum(cand[order])
    cum_wrong = np.cumsum((cand & wrong)[order])
    points = []
    for size in sizes:
        coverage, error = np.zeros(reps), np.zeros(reps)
        for r in range(reps):
            idx = rng.integers(0, conf.size, size)
            rule = fit_finalisation(conf[idx], wrong[idx], cand[idx], alpha=alpha, delta=delta)
            if rule.threshold is None:
                continue
            reach = int(np.searchsorted(-sorted_conf, -rule.threshold, side="right"))
            n_final = int(cum_final[reach - 1]) if reach else 0
            coverage[r] = n_final / conf.size
            error[r] = (int(cum_wrong[reach - 1]) / n_final) if n_final else 0.0
        points.append(
            PowerPoint(
                size=int(size),
                coverage_mean=float(coverage.mean()),
                coverage_p10=float(np.quantile(coverage, 0.1)),
                coverage_p50=float(np.quantile(coverage, 0.5)),
                error_mean=float(error.mean()),
            )
        )
    return points


def reviews_for_stable_rule(points: list[PowerPoint], have: int) -> int | None:
    """Fewest pool size on the curve at which a fitted rule is stable (it finalises something in 90% of
    draws, and its 10th-percentile coverage is at least 80% of the mean), minus ``have``; None: not on the
    curve (the model may never finalise at this alpha)."""
    for p in sorted(points, key=lambda q: q.size):
        if p.coverage_mean > 0 and p.coverage_p10 >= 0.8 * p.coverage_mean:
            return max(0, p.size - have)
    return None
