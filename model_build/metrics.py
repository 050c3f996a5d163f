"""Classification, calibration and selective-prediction metrics for the 3-class Bethesda model.

Conventions (all fixed here so every report is comparable):
- Confusion matrix rows = true class, columns = predicted class.
- Precision/recall/F1 of a class with a zero denominator is 0 (sklearn's ``zero_division=0``).
  Macro-F1 is the unweighted mean over classes; weighted-F1 weights by true-class support.
- ROC AUC is one-vs-rest per class, computed as the Mann-Whitney U statistic with mid-ranks for ties
  (identical to the trapezoidal area under the empirical ROC curve). NaN when a class has no positives
  or no negatives.
- ECE: 15 equal-width bins on the top-label confidence, bins (lo, hi] (the first bin also takes 0),
  ECE = sum_b n_b/N * |acc_b - conf_b|. This is the convention of Guo et al. 2017.
- Brier: multiclass, mean over images of sum_k (p_k - onehot_k)^2 (range 0..2).
- Bootstrap CIs: percentile intervals over ``n_boot`` resamples of images with replacement,
  ``numpy.random.default_rng(seed)``.
- Risk-coverage: images sorted by decreasing confidence; selective risk at coverage m/N is the error rate
  of the m most confident. Ties in confidence get the expected risk under random tie-breaking (each error
  indicator replaced by its tie group's mean), so the curve does not depend on input order.
  AURC = mean of the N selective risks (Geifman et al. 2019).
- McNemar: b = A right and B wrong, c = A wrong and B right; exact two-sided binomial p (the primary p)
  and chi-square with continuity correction max(|b - c| - 1, 0)^2 / (b + c). Both are 1.0 when b + c = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import binom, chi2, rankdata

from model_build.calibration import nll
from model_build.conformal import coverage_by_class, set_size_histogram

N_BINS = 15
# Class index of "Indeterminate/Suspicious" (Bethesda V in the paper's data) in the model's class order.
INDETERMINATE_INDEX = 1
MALIGNANT_INDEX = 2


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected (N, K>=2) probabilities, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {probs.shape[0]} rows")
    if probs.shape[0] == 0:
        raise ValueError("empty input")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]})")
    return probs, labels


# ---------------------------------------------------------------------------------------------------
# Classification


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if labels.shape != pred.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {pred.shape} must be equal 1-D shapes")
    for name, a in (("labels", labels), ("predictions", pred)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes})")
    return np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, -1)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_prf(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (K,) arrays from a confusion matrix."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(axis=1)}


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1."""
    return float(per_class_prf(cm)["f1"].mean())


def weighted_f1(cm: np.ndarray) -> float:
    """Per-class F1 weighted by true-class support."""
    prf = per_class_prf(cm)
    total = prf["support"].sum()
    return float((prf["f1"] * prf["support"]).sum() / total) if total else 0.0


def class_recall(labels: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Recall (sensitivity) of class k; NaN when class k is absent."""
    labels = np.asarray(labels)
    mask = labels == k
    return float((np.asarray(pred)[mask] == k).mean()) if mask.any() else float("nan")


def indeterminate_recall(labels: np.ndarray, pred: np.ndarray) -> float:
    """Recall of the Indeterminate/Suspicious class (index 1; Bethesda V in the paper's data)."""
    return class_recall(labels, pred, INDETERMINATE_INDEX)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC from the rank-sum (Mann-Whitney U) statistic with mid-ranks; NaN if one class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_ovr(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC for each class (K,), scoring class k by p_k."""
    probs, labels = _check(probs, labels)
    return np.array([binary_auc(probs[:, k], labels == k) for k in range(probs.shape[1])])


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC curve (fpr, tpr), one point per distinct threshold, starting at (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tps = np.cumsum(y)[last_of_group]
    fps = np.cumsum(~y)[last_of_group]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


# ---------------------------------------------------------------------------------------------------
# Calibration


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": a confidence equal to an edge lands in the bin it closes, i.e. bins are (lo, hi].
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy (NaN for empty bins) on the top-label confidence."""
    probs, labels = _check(probs, labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": mean_conf,
        "accuracy": accuracy,
    }


def _ece_from(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int) -> float:
    gap = np.bincount(idx, weights=conf - correct, minlength=n_bins)
    return float(np.abs(gap).sum() / conf.shape[0])


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error, equal-width (lo, hi] bins on the top-label confidence."""
    probs, labels = _check(probs, labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # sum_b n_b/N |conf_b - acc_b| = sum_b |sum_{i in b}(conf_i - correct_i)| / N
    return _ece_from(conf, correct, _bin_index(conf, n_bins), n_bins)


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum_k (p_k - onehot_k)^2."""
    probs, labels = _check(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ``statistic(idx)`` over ``n_boot`` resamples ``idx`` of range(n) with replacement."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ece_ci(
    probs: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000, seed: int = 0, n_bins: int = N_BINS
) -> tuple[float, float]:
    """95% percentile bootstrap CI of the ECE."""
    probs, labels = _check(probs, labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    return bootstrap_ci(
        lambda s: _ece_from(conf[s], correct[s], idx[s], n_bins), conf.shape[0], n_boot=n_boot, seed=seed
    )


def macro_f1_ci(
    labels: np.ndarray, pred: np.ndarray, n_classes: int, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap CI of the macro-F1."""
    labels = np.asarray(labels)
    pred = np.asarray(pred)
    return bootstrap_ci(
        lambda s: macro_f1(confusion_matrix(labels[s], pred[s], n_classes)),
        labels.shape[0],
        n_boot=n_boot,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------
# Selective prediction and comparison


def risk_coverage_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, selective risk), N points: coverage m/N, risk = error rate of the m most confident."""
    probs, labels = _check(probs, labels)
    conf = probs.max(axis=1)
    error = (probs.argmax(axis=1) != labels).astype(np.float64)
    order = np.argsort(-conf, kind="mergesort")
    conf, error = conf[order], error[order]
    # Tie groups: replace each error by its group's mean (expected value under random tie-breaking).
    group = np.cumsum(np.r_[True, conf[1:] != conf[:-1]]) - 1
    group_mean = np.bincount(group, weights=error) / np.bincount(group)
    m = np.arange(1, conf.shape[0] + 1)
    return m / conf.shape[0], np.cumsum(group_mean[group]) / m


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean selective risk over the N coverage levels)."""
    return float(risk_coverage_curve(probs, labels)[1].mean())


def optimal_aurc(n_errors: int, n: int) -> float:
    """AURC of an oracle confidence that ranks every correct image above every error."""
    m = np.arange(1, n + 1)
    return float((np.maximum(m - (n - n_errors), 0) / m).mean())


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """McNemar test of two classifiers' correctness on the same images (paired)."""
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"shapes differ: {correct_a.shape} vs {correct_b.shape}")
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "n_discordant": 0, "p_exact": 1.0, "chi2": 0.0, "p_chi2": 1.0, "p": 1.0}
    p_exact = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    p_chi2 = float(chi2.sf(stat, df=1))
    return {
        "b": b,
        "c": c,
        "n_discordant": n,
        "p_exact": p_exact,
        "chi2": stat,
        "p_chi2": p_chi2,
        "p": p_exact,
    }


def referral_rate(referral: np.ndarray) -> float:
    """Fraction of images flagged for human review."""
    referral = np.asarray(referral, dtype=bool)
    return float(referral.mean()) if referral.size else float("nan")


# ---------------------------------------------------------------------------------------------------
# One call


def _jsonable(x: Any) -> Any:
    """Plain-Python copy: numpy scalars/arrays converted, NaN/inf -> None, dict keys -> str."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer | int):
        return int(x)
    if isinstance(x, np.floating | float):
        return float(x) if math.isfinite(x) else None
    return x


def evaluate(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    referral: np.ndarray | None = None,
    sets: np.ndarray | None = None,
    other_pred: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics for one classifier; JSON-serialisable (NaN becomes None).

    Prediction = argmax of ``probs``. ``referral`` (N,) bool adds referral rate and accuracy among
    accepted/referred images; ``sets`` (N, K) bool adds conformal coverage and set sizes; ``other_pred``
    (N,) int adds a McNemar test of this classifier (A) against the other one (B). ``n_boot=0`` skips the
    bootstrap CIs.
    """
    probs, labels = _check(probs, labels)
    n, k = probs.shape
    names = list(class_names)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    pred = probs.argmax(axis=1)
    correct = pred == labels
    cm = confusion_matrix(labels, pred, k)
    prf = per_class_prf(cm)
    auc = roc_auc_ovr(probs, labels)
    n_err = int((~correct).sum())
    out: dict[str, Any] = {
        "n": n,
        "class_names": names,
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(cm),
        "weighted_f1": weighted_f1(cm),
        "confusion_matrix": cm,
        "per_class": {
            name: {
                "precision": prf["precision"][i],
                "recall": prf["recall"][i],
                "f1": prf["f1"][i],
                "support": prf["support"][i],
                "auc": auc[i],
            }
            for i, name in enumerate(names)
        },
        "macro_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "indeterminate_recall": indeterminate_recall(labels, pred) if k > INDETERMINATE_INDEX else None,
        "ece": ece(probs, labels),
        "ece_n_bins": N_BINS,
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "aurc": aurc(probs, labels),
        "aurc_optimal": optimal_aurc(n_err, n),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }
    if n_boot > 0:
        out["bootstrap"] = {
            "n_boot": n_boot,
            "seed": seed,
            "level": 0.95,
            "ece_ci": ece_ci(probs, labels, n_boot=n_boot, seed=seed),
            "macro_f1_ci": macro_f1_ci(labels, pred, k, n_boot=n_boot, seed=seed),
        }
    if referral is not None:
        referral = np.asarray(referral, dtype=bool)
        if referral.shape != (n,):
            raise ValueError(f"referral shape {referral.shape} does not match {n} rows")
        accepted = ~referral
        out["referral"] = {
            "rate": referral_rate(referral),
            "n_referred": int(referral.sum()),
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan"),
            "accuracy_referred": float(correct[referral].mean()) if referral.any() else float("nan"),
            "errors_accepted": int((~correct & accepted).sum()),
        }
    if sets is not None:
        sets = np.asarray(sets)
        if sets.shape != (n, k):
            raise ValueError(f"sets shape {sets.shape} does not match ({n}, {k})")
        sizes = sets.sum(axis=1)
        out["conformal"] = {
            "coverage": float(sets[np.arange(n), labels].mean()),
            "coverage_by_class": coverage_by_class(sets, labels, names),
            "set_size_histogram": set_size_histogram(sets),
            "mean_set_size": float(sizes.mean()),
            # The lone member of a singleton set need not be the argmax (thresholds differ per class).
            "singleton_accuracy": (
                float((sets.argmax(axis=1) == labels)[sizes == 1].mean()) if (sizes == 1).any() else float("nan")
            ),
        }
    if other_pred is not None:
        other_pred = np.asarray(other_pred)
        if other_pred.shape != (n,):
            raise ValueError(f"other_pred shape {other_pred.shape} does not match {n} rows")
        out["mcnemar"] = mcnemar(correct, other_pred == labels)
    return _jsonable(out)
