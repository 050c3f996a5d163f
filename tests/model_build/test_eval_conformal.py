from __future__ import annotations

import numpy as np
import pytest

from cds_daemon.analysis.numeric import prediction_sets, softmax
from model_build.conformal import (
    class_conditional_quantiles,
    coverage_by_class,
    min_calibration_size,
    set_size_histogram,
)


def probs_with_true_scores(scores: np.ndarray, label: int, k: int = 3) -> np.ndarray:
    """Rows whose true-class probability is 1 - score, the rest spread evenly."""
    p = np.tile(scores[:, None] / (k - 1), (1, k))
    p[:, label] = 1.0 - scores
    return p


def test_quantile_is_the_finite_sample_order_statistic() -> None:
    scores = np.arange(1, 21) / 100.0  # 20 scores 0.01..0.20
    probs = np.vstack([probs_with_true_scores(scores, 0), probs_with_true_scores(scores, 1)])
    labels = np.repeat([0, 1], 20)
    q = class_conditional_quantiles(probs, labels, alpha=0.1)
    # rank = ceil(21 * 0.9) = 19 -> the 19th smallest score (the uncorrected ceil(20 * 0.9) = 18 would
    # give 0.18); class 2 is absent -> 1.0.
    np.testing.assert_allclose(q, [0.19, 0.19, 1.0])
    q = class_conditional_quantiles(probs, labels, alpha=0.2)
    np.testing.assert_allclose(q[:2], [0.17, 0.17])  # ceil(21 * 0.8) = 17
    # (24 + 1)(1 - 0.44) is 14 exactly but 14.000000000000002 in floating point: rank 14, not 15.
    scores = np.arange(1, 25) / 100.0
    q = class_conditional_quantiles(probs_with_true_scores(scores, 0), np.zeros(24, dtype=int), alpha=0.44)
    assert q[0] == pytest.approx(0.14)


def test_small_classes_get_the_trivial_threshold() -> None:
    assert min_calibration_size(0.1) == 9
    assert min_calibration_size(0.05) == 19
    assert min_calibration_size(0.2) == 4
    for n, expect_trivial in ((8, True), (9, False)):
        scores = np.linspace(0.0, 0.5, n)
        q = class_conditional_quantiles(probs_with_true_scores(scores, 0), np.zeros(n, dtype=int), 0.1)
        assert bool(q[0] == 1.0) is expect_trivial
    # q = 1 keeps the class in every set, even at probability 0.
    sets = prediction_sets(np.array([[0.0, 1.0, 0.0]]), np.array([1.0, 0.5, 0.5]))
    assert sets[0, 0]


def test_threshold_is_inclusive() -> None:
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(0, 2, (50, 3)))
    labels = rng.integers(0, 3, 50)
    q = class_conditional_quantiles(probs, labels, alpha=0.2)
    sets = prediction_sets(probs, q)
    for k in range(3):
        s = 1.0 - probs[labels == k, k]
        at_q = np.flatnonzero(labels == k)[s == q[k]]
        assert at_q.size >= 1
        assert sets[at_q, k].all()


def test_class_conditional_coverage_on_exchangeable_data() -> None:
    rng = np.random.default_rng(4)
    n, alpha = 3000, 0.1
    z = rng.normal(0, 1.5, (n, 3)) + np.array([0.5, 0.0, -0.5])
    probs = softmax(z)
    # Labels drawn from a different (sharper) model: the probabilities are miscalibrated, which
    # conformal must not care about.
    u = rng.random(n)
    labels = (u[:, None] > np.cumsum(softmax(2.0 * z), axis=1)).sum(axis=1).clip(max=2)
    cover, n_cal_k = [], []
    for _ in range(200):
        perm = rng.permutation(n)
        cal, test = perm[:300], perm[300:]
        q = class_conditional_quantiles(probs[cal], labels[cal], alpha)
        cov = coverage_by_class(prediction_sets(probs[test], q), labels[test])
        cover.append([cov[str(k)] for k in range(3)])
        n_cal_k.append(np.bincount(labels[cal], minlength=3))
    mean_cover = np.mean(cover, axis=0)
    upper = 1 - alpha + 1 / (np.mean(n_cal_k, axis=0) + 1)
    assert (mean_cover >= 1 - alpha - 0.01).all(), mean_cover
    assert (mean_cover <= upper + 0.015).all(), (mean_cover, upper)


def test_coverage_and_histogram() -> None:
    sets = np.array([[True, False, False], [True, True, False], [False, False, False], [False, True, True]])
    labels = np.array([0, 1, 0, 1])
    assert coverage_by_class(sets, labels) == pytest.approx({"0": 0.5, "1": 1.0, "2": np.nan}, nan_ok=True)
    cov = coverage_by_class(sets, labels, ["B", "S", "M"])
    assert list(cov) == ["B", "S", "M"]
    assert set_size_histogram(sets) == {0: 1, 1: 1, 2: 2, 3: 0}


def test_input_validation() -> None:
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="alpha"):
        class_conditional_quantiles(probs, np.zeros(4, dtype=int), 0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        class_conditional_quantiles(probs, np.full(4, 3), 0.1)
    with pytest.raises(ValueError, match="quantiles shape"):
        prediction_sets(probs, np.ones(2))
    with pytest.raises(ValueError, match="boolean"):
        set_size_histogram(np.ones((2, 3)))
    with pytest.raises(ValueError, match="class names"):
        coverage_by_class(np.ones((4, 3), dtype=bool), np.zeros(4, dtype=int), ["a", "b"])
