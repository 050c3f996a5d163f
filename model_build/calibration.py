"""Temperature scaling: NLL and the NLL-optimal temperature.

softmax and log-softmax are the daemon's own (:mod:`cds_daemon.analysis.numeric`), so the temperature
fitted here is applied there to exactly the same function.
"""

from __future__ import annotations

import math
import warnings

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
