"""Temperature scaling: NLL and the NLL-optimal temperature.

softmax and log-softmax are the daemon's own (:mod:`cds_daemon.analysis.numeric`), so the temperature
fitted here is applied there to exactly the same function.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from cds_daemon.analysis.numeric import log_softmax

# Search range for T. Wider than any sane model needs; hitting an end means the logits are degenerate
# (e.g. perfectly separable data drives T -> 0) and a warning is raised.
T_MIN = 0.05
T_MAX = 20.0


def _check_logits_labels(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"expected (N, K) scores, got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {logits.shape[0]} rows")
    if logits.shape[0] == 0:
        raise ValueError("empty input")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    return logits, labels


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log).

    Probabilities are floored at the smallest positive float so a hard zero gives a large finite value
    rather than inf.
    """
    probs, labels = _check_logits_labels(probs, labels)
    p_true = probs[np.arange(labels.shape[0]), labels]
    return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))


def _nll_logits(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-np.mean(log_softmax(logits, temperature)[np.arange(labels.shape[0]), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on (logits, labels).

    NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search on log T in
    [T_MIN, T_MAX] finds the global minimum. The NLL is evaluated from the logits via log-softmax
    (not from rounded probabilities).
    """
    logits, labels = _check_logits_labels(logits, labels)
    res = minimize_scalar(
        lambda log_t: _nll_logits(logits, labels, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    t = math.exp(float(res.x))
    if not res.success:
        raise RuntimeError(f"temperature fit did not converge: {res.message}")
    if t < T_MIN * 1.01 or t > T_MAX * 0.99:
        warnings.warn(
            f"fitted temperature {t:.4g} is at the edge of [{T_MIN}, {T_MAX}]; logits may be degenerate",
            RuntimeWarning,
            stacklevel=2,
        )
    return t


def fit_member_temperatures(basic: np.ndarray, premium: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(T_basic, T_premium, T_ensemble): each member by NLL, then the ensemble of the scaled members."""
    from cds_daemon.analysis.numeric import ensemble_logits

    t_b = fit_temperature(basic, labels)
    t_p = fit_temperature(premium, labels)
    t_e = fit_temperature(ensemble_logits(basic, premium, t_b, t_p), labels)
    return t_b, t_p, t_e


def cross_fitted_ece(
    basic: np.ndarray, premium: np.ndarray, labels: np.ndarray, *, folds: int = 2, seed: int = 0
) -> tuple[float, float]:
    """(ECE raw, ECE temperature-scaled) of the ensemble, each fold scored by temperatures fitted on the
    other folds: the check of "does scaling help" on fields the fit did not see.

    Folds are stratified by label. The ECE is computed on all fields at once (every field scored out of fold),
    so the two figures compare like with like.
    """
    from cds_daemon.analysis.numeric import ensemble_logits, softmax
    from model_build.metrics import ece

    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.zeros(labels.shape[0], dtype=np.int64)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        fold[idx] = np.arange(idx.size) % folds
    scaled = np.zeros((labels.shape[0], basic.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a small fold may put T at its bound: it is still scored
        for f in range(folds):
            fit, out = fold != f, fold == f
            if not fit.any():  # fewer fields than folds (smoke runs): scored in sample
                fit = np.ones_like(fit)
            t_b, t_p, t_e = fit_member_temperatures(basic[fit], premium[fit], labels[fit])
            scaled[out] = softmax(ensemble_logits(basic[out], premium[out], t_b, t_p), t_e)
    raw = softmax(ensemble_logits(basic, premium, 1.0, 1.0))
    return float(ece(raw, labels)), float(ece(scaled, labels))


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperatures kept (1.0 each: the raw ensemble) and why."""

    basic: float
    premium: float
    ensemble: float
    chosen: str
    cv_ece_raw: float
    cv_ece_scaled: float

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "cv_ece_raw": self.cv_ece_raw, "cv_ece_scaled": self.cv_ece_scaled, "folds": 2}


def choose_temperatures(basic: np.ndarray, premium: np.ndarray, labels: np.ndarray) -> TemperatureChoice:
    """Temperature scaling minimises NLL, not the calibration error, and a fit can overfit a small split: it is
    kept only when it lowers the ECE of fields the fit did not see (2-fold cross-fitting on the calibration
    split), and then fitted on the whole split; otherwise the raw ensemble is kept."""
    cv_raw, cv_scaled = cross_fitted_ece(basic, premium, labels)
    if cv_scaled <= cv_raw:
        t_b, t_p, t_e = fit_member_temperatures(basic, premium, labels)
        return TemperatureChoice(t_b, t_p, t_e, "temperature scaling", cv_raw, cv_scaled)
    why = "raw probabilities (temperature scaling did not lower the cross-fitted ECE)"
    return TemperatureChoice(1.0, 1.0, 1.0, why, cv_raw, cv_scaled)
