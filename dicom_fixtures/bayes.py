"""The best any classifier could do on a synthetic dataset: the Bayes-optimal rule on the latent severity.

Every synthetic field is rendered from one latent atypia severity per slide, drawn from a normal
distribution per class (``morphology.severity_distribution``: centres pulled together and spread
by ``difficulty``). A classifier that saw that severity itself, without the rendering noise, and
knew the class priors, is the Bayes-optimal one; its macro-F1 is the ceiling a model trained on the
images can approach. ``model_build`` prints its model next to these figures (and the coverage the
same finalisation rule reaches with the Bayes posterior as its confidence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .morphology import CLASSES, severity_distribution


def posteriors(severities: Sequence[float], difficulty: float, priors: Sequence[float] | None = None) -> np.ndarray:
    """(N, 3) class posteriors given each field's latent severity (classes in ``CLASSES`` order)."""
    s = np.asarray(severities, dtype=np.float64)[:, None]
    params = [severity_distribution(label, difficulty) for label in CLASSES]
    means = np.array([m for m, _ in params])[None, :]
    sds = np.array([sd for _, sd in params])[None, :]
    log_lik = -0.5 * ((s - means) / sds) ** 2 - np.log(sds)
    prior = np.full(len(CLASSES), 1.0 / len(CLASSES)) if priors is None else np.asarray(priors, np.float64)
    log_post = log_lik + np.log(prior)[None, :]
    log_post -= log_post.max(axis=1, keepdims=True)
    post = np.exp(log_post)
    return np.asarray(post / post.sum(axis=1, keepdims=True))


def macro_f1(labels: Sequence[int], predicted: Sequence[int], n_classes: int = len(CLASSES)) -> float:
    y, p = np.asarray(labels), np.asarray(predicted)
    scores = []
    for k in range(n_classes):
        tp = float(np.sum((p == k) & (y == k)))
        denom = float(np.sum(p == k) + np.sum(y == k))
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def bayes_optimal(labels: Sequence[int], severities: Sequence[float], difficulty: float) -> dict[str, float]:
    """Accuracy and macro-F1 of the Bayes-optimal rule on these fields (labels as class indices)."""
    y = np.asarray(labels)
    priors = np.bincount(y, minlength=len(CLASSES)) / max(len(y), 1)
    predicted = posteriors(severities, difficulty, np.maximum(priors, 1e-9)).argmax(axis=1)
    return {"accuracy": float(np.mean(predicted == y)), "macro_f1": macro_f1(y, predicted)}
