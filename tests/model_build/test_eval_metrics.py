from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cds_daemon.analysis.numeric import softmax
from model_build import metrics
from model_build.calibration import nll

NAMES = ["Benign", "Indeterminate/Suspicious", "Malignant"]

# Hand-computed example: cm rows = true [[3,1,0],[1,1,0],[0,1,3]].
Y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
P = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 1])


def conf_probs(conf: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """3-class rows with top class ``pred`` at probability ``conf`` (>= 1/3), the rest split evenly."""
    p = np.column_stack([(1 - conf) / 2] * 3)
    p[np.arange(conf.size), pred] = conf
    return p


def test_confusion_matrix_rows_are_true_class() -> None:
    cm = metrics.confusion_matrix(Y, P, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [1, 1, 0], [0, 1, 3]])
    with pytest.raises(ValueError, match="predictions must lie"):
        metrics.confusion_matrix(Y, P + 1, 3)


def test_precision_recall_f1_macro_and_weighted() -> None:
    cm = metrics.confusion_matrix(Y, P, 3)
    prf = metrics.per_class_prf(cm)
    np.testing.assert_allclose(prf["precision"], [3 / 4, 1 / 3, 1.0])
    np.testing.assert_allclose(prf["recall"], [3 / 4, 1 / 2, 3 / 4])
    np.testing.assert_allclose(prf["f1"], [0.75, 0.4, 6 / 7])
    assert metrics.macro_f1(cm) == pytest.approx((0.75 + 0.4 + 6 / 7) / 3)
    assert metrics.weighted_f1(cm) == pytest.approx((0.75 * 4 + 0.4 * 2 + 6 / 7 * 4) / 10)
    assert metrics.macro_f1(cm) != pytest.approx(metrics.weighted_f1(cm))


def test_never_predicted_class_scores_zero() -> None:
    cm = metrics.confusion_matrix(np.array([0, 1, 2]), np.array([0, 0, 2]), 3)
    prf = metrics.per_class_prf(cm)
    assert prf["precision"][1] == 0.0 and prf["f1"][1] == 0.0
    assert math.isnan(metrics.class_recall(np.array([0, 0]), np.array([0, 0]), 1))  # class 1 absent
    assert metrics.indeterminate_recall(np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1])) == pytest.approx(2 / 3)


def test_auc_rank_statistic() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert metrics.binary_auc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == 1.0
    assert metrics.binary_auc(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), y) == 0.0
    assert metrics.binary_auc(np.full(5, 0.5), y) == 0.5
    assert math.isnan(metrics.binary_auc(np.arange(3.0), np.array([1, 1, 1])))


def test_auc_matches_pairwise_count_and_roc_area() -> None:
    rng = np.random.default_rng(5)
    s = rng.integers(0, 6, 200) / 5.0  # many ties
    y = rng.random(200) < 0.3 + 0.4 * s
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    auc = metrics.binary_auc(s, y)
    assert auc == pytest.approx(brute)
    fpr, tpr = metrics.roc_curve(s, y)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auc)


def test_roc_auc_ovr_perfect_and_absent_class() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    auc = metrics.roc_auc_ovr(conf_probs(np.full(6, 0.8), labels), labels)
    np.testing.assert_allclose(auc, 1.0)
    auc = metrics.roc_auc_ovr(conf_probs(np.full(4, 0.8), np.array([0, 1, 0, 1])), np.array([0, 1, 0, 1]))
    assert math.isnan(auc[2]) and auc[0] == 1.0


def test_ece_zero_for_exactly_calibrated_bins() -> None:
    # In each bin the confidence equals the accuracy: 10 images at 0.9 (9 right), 5 at 0.6 (3 right),
    # 4 at 0.5 (2 right).
    conf = np.repeat([0.9, 0.6, 0.5], [10, 5, 4])
    right = np.r_[np.ones(9), 0, np.ones(3), 0, 0, 1, 1, 0, 0].astype(bool)
    probs = conf_probs(conf, np.where(right, 0, 1))
    assert metrics.ece(probs, np.zeros(conf.size, dtype=int)) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_miscalibration() -> None:
    pred = np.array([0] * 6 + [1] * 4)
    assert metrics.ece(conf_probs(np.full(10, 0.9), pred), np.zeros(10, dtype=int)) == pytest.approx(0.3)


def test_ece_near_zero_for_bernoulli_calibrated_sample() -> None:
    rng = np.random.default_rng(6)
    n = 200_000
    conf = rng.uniform(0.34, 1.0, n)
    pred = np.where(rng.random(n) < conf, 0, 1)
    assert metrics.ece(conf_probs(conf, pred), np.zeros(n, dtype=int)) < 0.005
    # The same sample with every confidence pushed up by 0.1 is miscalibrated by about 0.1.
    shifted = conf_probs(np.minimum(conf + 0.1, 1.0), pred)
    assert metrics.ece(shifted, np.zeros(n, dtype=int)) > 0.08


def test_bins_are_open_below_closed_above() -> None:
    # 0.6 = 9/15 is an edge: with (lo, hi] it belongs to bin 8 = (8/15, 9/15], not bin 9.
    probs = conf_probs(np.array([0.6, 0.6000001, 1.0, 1 / 3 + 1e-12]), np.zeros(4, dtype=int))
    rb = metrics.reliability_bins(probs, np.zeros(4, dtype=int))
    assert rb["count"][8] == 1 and rb["count"][9] == 1 and rb["count"][14] == 1 and rb["count"][5] == 1
    assert rb["count"].sum() == 4
    assert math.isnan(rb["accuracy"][0])


def test_brier_and_nll() -> None:
    labels = np.array([0, 1, 2])
    assert metrics.brier(np.eye(3), labels) == 0.0
    assert metrics.brier(np.full((3, 3), 1 / 3), labels) == pytest.approx(2 / 3)
    assert metrics.brier(np.eye(3)[[1, 2, 0]], labels) == pytest.approx(2.0)
    r = metrics.evaluate(np.full((3, 3), 1 / 3), labels, class_names=NAMES, n_boot=0)
    assert r["nll"] == pytest.approx(math.log(3)) == nll(np.full((3, 3), 1 / 3), labels)


def test_risk_coverage_and_aurc() -> None:
    probs = conf_probs(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 0]))
    labels = np.zeros(4, dtype=int)
    cov, risk = metrics.risk_coverage_curve(probs, labels)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 4])
    assert metrics.aurc(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # Perfect ranking reaches the oracle.
    good = conf_probs(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 1]))
    assert metrics.aurc(good, labels) == pytest.approx(metrics.optimal_aurc(1, 4))


def test_risk_coverage_ties_do_not_depend_on_order() -> None:
    pred = np.array([1, 0, 0, 0])
    labels = np.zeros(4, dtype=int)
    probs = conf_probs(np.full(4, 0.7), pred)
    _, risk = metrics.risk_coverage_curve(probs, labels)
    np.testing.assert_allclose(risk, 0.25)
    _, risk_rev = metrics.risk_coverage_curve(probs[::-1], labels)
    np.testing.assert_allclose(risk_rev, risk)


def test_mcnemar() -> None:
    rng = np.random.default_rng(7)
    c = rng.random(50) < 0.7
    same = metrics.mcnemar(c, c)
    assert same["b"] == same["c"] == 0 and same["p"] == same["p_exact"] == same["p_chi2"] == 1.0
    a = np.r_[np.ones(10), np.zeros(2), np.ones(30), np.zeros(5)].astype(bool)
    b = np.r_[np.zeros(10), np.ones(2), np.ones(30), np.zeros(5)].astype(bool)
    r = metrics.mcnemar(a, b)
    assert (r["b"], r["c"], r["n_discordant"]) == (10, 2, 12)
    assert r["p_exact"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert r["chi2"] == pytest.approx(49 / 12)
    assert r["p_chi2"] == pytest.approx(math.erfc(math.sqrt(49 / 12 / 2)))
    swapped = metrics.mcnemar(b, a)
    assert (swapped["b"], swapped["c"], swapped["p_exact"]) == (2, 10, r["p_exact"])
    assert metrics.mcnemar(np.array([True, False]), np.array([False, True]))["p_exact"] == 1.0


def test_bootstrap_ci_is_seeded() -> None:
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(0, 2, (300, 3)) + 2 * np.eye(3)[labels])
    a = metrics.ece_ci(probs, labels, n_boot=200, seed=1)
    assert a == metrics.ece_ci(probs, labels, n_boot=200, seed=1)
    assert a != metrics.ece_ci(probs, labels, n_boot=200, seed=2)
    assert a[0] < a[1]
    pred = probs.argmax(1)
    lo, hi = metrics.macro_f1_ci(labels, pred, 3, n_boot=200, seed=1)
    assert lo < metrics.macro_f1(metrics.confusion_matrix(labels, pred, 3)) < hi


def test_evaluate_is_json_and_complete() -> None:
    rng = np.random.default_rng(9)
    labels = np.r_[rng.integers(0, 2, 60), 0]  # class 2 absent: its AUC and coverage are None
    probs = softmax(rng.normal(0, 1.5, (61, 3)) + 2 * np.eye(3)[labels])
    referral = probs.max(1) < 0.7
    sets = probs > 0.2
    other = rng.integers(0, 3, 61)
    r = metrics.evaluate(
        probs, labels, class_names=NAMES, referral=referral, sets=sets, other_pred=other, n_boot=50, seed=3
    )
    json.dumps(r, allow_nan=False)
    assert r["n"] == 61 and r["class_names"] == NAMES
    assert r["per_class"]["Malignant"]["auc"] is None
    assert r["conformal"]["coverage_by_class"]["Malignant"] is None
    assert r["conformal"]["set_size_histogram"] == {
        str(k): int(v) for k, v in enumerate(np.bincount(sets.sum(1), minlength=4))
    }
    assert r["referral"]["rate"] == pytest.approx(referral.mean())
    assert r["referral"]["n_referred"] == int(referral.sum())
    assert r["mcnemar"] == metrics.mcnemar(probs.argmax(1) == labels, other == labels)
    assert r["indeterminate_recall"] == r["per_class"]["Indeterminate/Suspicious"]["recall"]
    assert r["bootstrap"]["ece_ci"][0] <= r["bootstrap"]["ece_ci"][1]
    assert r["ece"] == pytest.approx(metrics.ece(probs, labels))
    assert r["confusion_matrix"] == metrics.confusion_matrix(labels, probs.argmax(1), 3).tolist()
    assert "bootstrap" not in metrics.evaluate(probs, labels, class_names=NAMES, n_boot=0)


def test_evaluate_validates_shapes() -> None:
    probs = np.full((4, 3), 1 / 3)
    labels = np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match="class names"):
        metrics.evaluate(probs, labels, class_names=["a", "b"])
    with pytest.raises(ValueError, match="referral shape"):
        metrics.evaluate(probs, labels, class_names=NAMES, referral=np.zeros(3, dtype=bool), n_boot=0)
    with pytest.raises(ValueError, match="sets shape"):
        metrics.evaluate(probs, labels, class_names=NAMES, sets=np.zeros((4, 2), dtype=bool), n_boot=0)
    assert metrics.referral_rate(np.array([True, False, False, False])) == 0.25
