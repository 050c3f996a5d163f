"""The exact binomial arithmetic, vectorised and scalar, and the anytime-valid audit test, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cds_daemon.common.binomial import (
    anytime_lower_bound,
    binomial_cdf,
    binomial_cdf_many,
    binomial_lower_bound,
    sequential_evidence,
)


def test_vectorised_cdf_equals_the_scalar_one() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(1, 3000, 400)
    k = np.minimum(rng.integers(-1, 80, 400), n + 1)
    for p in (1e-4, 0.02, 0.3, 0.97):
        got = binomial_cdf_many(k, n, p)
        want = [binomial_cdf(int(a), int(b), p) for a, b in zip(k, n, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)


def test_lower_bounds() -> None:
    assert binomial_lower_bound(0, 100, 0.1) == 0.0 and anytime_lower_bound(0, 100, 0.1) == 0.0
    # Clopper-Pearson for k = n: delta^(1/n)
    assert binomial_lower_bound(10, 10, 0.1) == pytest.approx(0.1 ** (1 / 10), abs=1e-9)
    # The anytime bound is the price of looking at every step: below the one-look bound, and consistent
    # with the evidence it is built from.
    for k, n in [(3, 10), (8, 100), (30, 500)]:
        lower = anytime_lower_bound(k, n, 0.1)
        assert lower <= binomial_lower_bound(k, n, 0.1)
        assert (sequential_evidence(k, n, 0.02) >= 10) == (lower > 0.02)


def _first_alarm(errors: np.ndarray, alpha: float, delta: float) -> int | None:
    """The audit's decision after every audited image: the first step at which the evidence reaches 1/delta."""
    k = 0
    for n, wrong in enumerate(errors, start=1):
        k += int(wrong)
        if sequential_evidence(k, n, alpha) >= 1 / delta:
            return n
    return None


@pytest.mark.parametrize("true_rate", [0.02, 0.01])
def test_looking_after_every_image_keeps_false_alarms_under_delta(true_rate: float) -> None:
    """At an error rate at or below alpha, checking after each of 1500 audited images, for 300 sites."""
    alpha, delta, runs = 0.02, 0.1, 300
    rng = np.random.default_rng(11)
    alarms = sum(_first_alarm(rng.random(1500) < true_rate, alpha, delta) is not None for _ in range(runs))
    assert alarms / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs)


def test_a_rule_that_errs_five_times_too_often_is_caught() -> None:
    alpha, delta, runs = 0.02, 0.1, 100
    rng = np.random.default_rng(12)
    found = [_first_alarm(rng.random(600) < 0.10, alpha, delta) for _ in range(runs)]
    caught = [n for n in found if n is not None]
    assert len(caught) >= 0.95 * runs and float(np.median(caught)) < 150


def test_no_errors_is_no_evidence() -> None:
    assert sequential_evidence(0, 50, 0.02) < 1 and sequential_evidence(0, 5000, 0.02) < 1e-3
