"""The finalisation rule's guarantee, checked where the truth is known, and its arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cds_daemon.analysis.risk import fit_finalisation, power_curve, reviews_for_stable_rule, rule_from_manifest
from cds_daemon.common.binomial import binomial_cdf, binomial_upper_bound, min_sample_size


def test_binomial_against_closed_forms() -> None:
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)
    assert binomial_cdf(1, 10, 0.1) == pytest.approx(0.9**10 + 10 * 0.1 * 0.9**9)
    assert binomial_cdf(10, 10, 0.3) == 1.0 and binomial_cdf(-1, 10, 0.3) == 0.0
    assert binomial_upper_bound(0, 100, 0.1) == pytest.approx(1 - 0.1 ** (1 / 100), abs=1e-9)
    assert min_sample_size(0.02, 0.1) == 114 and (1 - 0.02) ** 114 <= 0.1 < (1 - 0.02) ** 113


def _population(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with a known error curve: P(wrong | score s) = 0.4 * (1 - s)^4, a third not candidates."""
    score = rng.uniform(0.0, 1.0, n)
    wrong = rng.uniform(0.0, 1.0, n) < 0.4 * (1.0 - score) ** 4
    candidate = rng.uniform(0.0, 1.0, n) < 2 / 3
    return score, wrong, candidate


def _true_risk(threshold: float) -> float:
    """Error rate among candidates with score >= t: the integral of 0.4 (1 - s)^4 over [t, 1], over (1 - t)."""
    return 0.08 * (1.0 - threshold) ** 4


@pytest.mark.parametrize(("alpha", "delta", "n"), [(0.02, 0.1, 600), (0.05, 0.2, 300), (0.02, 0.05, 1500)])
def test_the_rule_exceeds_alpha_at_most_delta_of_the_time(alpha: float, delta: float, n: int) -> None:
    rng = np.random.default_rng(1234)
    runs, exceeded, finalised = 400, 0, 0
    for _ in range(runs):
        rule = fit_finalisation(*_population(rng, n), alpha=alpha, delta=delta)
        if rule.threshold is not None:
            finalised += 1
            exceeded += _true_risk(rule.threshold) > alpha
    assert finalised > runs / 2, "the rule should usually finalise something here"
    # The guarantee, with room for the simulation's own noise (3 binomial standard errors).
    assert exceeded / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)


def test_no_rule_when_errors_come_early() -> None:
    score = np.linspace(1.0, 0.0, 300)
    wrong = np.zeros(300, bool)
    wrong[::10] = True  # 10% wrong at every level
    rule = fit_finalisation(score, wrong, np.ones(300, bool), alpha=0.02, delta=0.1)
    assert rule.threshold is None and rule.n_finalised == 0 and rule.upper_bound == 1.0


def test_ties_are_finalised_together_and_the_manifest_refits() -> None:
    score = np.array([0.99] * 120 + [0.9] * 60 + [0.5] * 20)
    wrong = np.array([False] * 180 + [True] * 20)
    rule = fit_finalisation(score, wrong, np.ones(200, bool), alpha=0.02, delta=0.1)
    assert rule.threshold == 0.9 and rule.n_finalised == 180 and rule.errors == 0
    block = {
        **rule.to_json(),
        "calibration": {"confidence": score.tolist(), "error": wrong.tolist(), "candidate": [True] * 200},
    }
    assert rule_from_manifest(block) == rule
    stricter = rule_from_manifest(block, alpha=0.01)  # would need 230 error-free fields: there are 180
    assert stricter.alpha == 0.01 and stricter.threshold is None


def _reference_fit(score: np.ndarray, wrong: np.ndarray, cand: np.ndarray, alpha: float, delta: float) -> tuple:
    """The fixed sequence written as plainly as possible (one scalar test per threshold)."""
    order = np.argsort(-score[cand], kind="stable")
    s, w = score[cand][order], wrong[cand][order]
    best, n = None, 0
    while n < s.size:
        n = int(np.searchsorted(-s, -s[n], side="right"))
        if n < min_sample_size(alpha, delta):
            continue
        k = int(w[:n].sum())
        if binomial_cdf(k, n, alpha) > delta:
            break
        best = (float(s[n - 1]), n, k)
    return best or (None, 0, 0)


def test_the_vectorised_sequence_equals_the_plain_one() -> None:
    rng = np.random.default_rng(99)
    for trial in range(60):
        n = int(rng.integers(50, 3000))
        score, wrong, cand = _population(rng, n)
        score = np.round(score, int(rng.integers(1, 4)))  # ties of every size
        alpha, delta = (0.02, 0.1) if trial % 2 else (0.05, 0.2)
        rule = fit_finalisation(score, wrong, cand, alpha=alpha, delta=delta)
        assert (rule.threshold, rule.n_finalised, rule.errors) == _reference_fit(score, wrong, cand, alpha, delta)


def test_power_curve_grows_with_the_pool_and_says_when_a_rule_is_stable() -> None:
    rng = np.random.default_rng(5)
    score, wrong, cand = _population(rng, 800)
    points = power_curve(score, wrong, cand, (100, 400, 4000), alpha=0.02, delta=0.1, reps=60)
    assert points[0].coverage_mean == 0.0  # 100 < min_sample_size(0.02, 0.1): nothing can be certified
    assert points[2].coverage_mean > points[1].coverage_mean > 0.0
    assert points[2].coverage_p10 >= 0.8 * points[2].coverage_mean
    assert reviews_for_stable_rule(points, 800) == 3200
    assert reviews_for_stable_rule(points[:1], 800) is None
