"""What a perfect classifier would reach on a synthetic dataset, printed beside the model.

A dataset written by ``dicom_fixtures make-dataset`` records each field's latent severity and the
difficulty it was drawn at. The Bayes-optimal rule on that severity (``dicom_fixtures.bayes``) gives
the ceiling of macro-F1, and, used as the confidence of the same finalisation procedure (fitted on the
calibration split, applied to the test split), the ceiling of what can be finalised at the guaranteed
alpha. Real datasets have no latent severity: then there is no ceiling to print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cds_daemon.analysis.risk import fit_finalisation
from dicom_fixtures.bayes import bayes_optimal, posteriors
from model_build import metrics

DATASET_JSON = "dataset.json"


def latent_severities(data_dir: Path) -> tuple[dict[str, float], float] | None:
    """(severity by path relative to the dataset, difficulty), when the dataset is synthetic."""
    path = Path(data_dir) / DATASET_JSON
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    if "severities" not in info or "difficulty" not in info:
        return None
    return {str(k): float(v) for k, v in info["severities"].items()}, float(info["difficulty"])


def bayes_ceiling(
    data_dir: Path,
    paths: dict[str, list[Path]],
    labels: dict[str, np.ndarray],
    *,
    risk_alpha: float,
    risk_delta: float,
) -> dict[str, Any] | None:
    """Bayes-optimal macro-F1 on the test split and its finalised coverage at (risk_alpha, risk_delta)."""
    found = latent_severities(data_dir)
    if found is None:
        return None
    severities, difficulty = found
    root = Path(data_dir).resolve()

    def sev(split: str) -> np.ndarray:
        return np.array([severities[str(Path(p).resolve().relative_to(root))] for p in paths[split]])

    test, cal = sev("test"), sev("calibration")
    figures = bayes_optimal(labels["test"], test, difficulty)
    p_cal, p_test = posteriors(cal, difficulty), posteriors(test, difficulty)
    rule = fit_finalisation(
        p_cal.max(axis=1),
        p_cal.argmax(axis=1) != labels["calibration"],
        p_cal.argmax(axis=1) != metrics.INDETERMINATE_INDEX,
        alpha=risk_alpha,
        delta=risk_delta,
    )
    finalised = (p_test.argmax(axis=1) != metrics.INDETERMINATE_INDEX) & (
        p_test.max(axis=1) >= (np.inf if rule.threshold is None else rule.threshold)
    )
    wrong = p_test.argmax(axis=1) != labels["test"]
    return {
        "difficulty": difficulty,
        "macro_f1": figures["macro_f1"],
        "accuracy": figures["accuracy"],
        "finalised_coverage": float(finalised.mean()),
        "finalised_error": float(wrong[finalised].mean()) if finalised.any() else None,
        "rule": "the Bayes posterior on the latent severity as the confidence of the same finalisation procedure",
    }
