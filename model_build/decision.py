"""Calibration and the triage decision statistics, all fitted on the calibration split only.

- Temperature per member (Basic, Premium) by NLL; ensemble logits = mean of the two temperature-scaled
  member logits; then an ensemble temperature on those (``model_build.calibration.fit_temperature``).
- Class-conditional conformal quantiles at ``alpha`` on the ensemble probabilities.
- Confidence threshold: a fixed policy value (default 0.6, ``TrainConfig.confidence_threshold``). It is
  not tuned on the calibration split because the conformal quantiles already use that split for the
  statistical guarantee; the threshold is a clinical policy knob recorded in the manifest.
- OOD thresholds: the ``ood_percentile`` (99th) of the calibration split's Mahalanobis and energy scores,
  i.e. about 1% of in-distribution fields are flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cds_daemon.analysis.numeric import energy_score, ensemble_logits, mahalanobis_score, prediction_sets, softmax
from cds_daemon.analysis.triage import model_reasons, reason_codes
from model_build.calibration import fit_temperature
from model_build.conformal import class_conditional_quantiles
from model_build.ood import MahalanobisStats


@dataclass
class Calibration:
    temperature_basic: float
    temperature_premium: float
    temperature_ensemble: float
    alpha: float
    quantiles: list[float]
    confidence_threshold: float
    mahalanobis_threshold: float
    energy_threshold: float
    ood_percentile: float
    mahalanobis_shrinkage: float

    def to_json(self) -> dict[str, float | list[float]]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Outputs:
    """Everything the daemon computes for a batch of fields, from backbone/aggregator logits."""

    basic_probs: np.ndarray
    premium_probs: np.ndarray
    ensemble_raw_probs: np.ndarray  # uncalibrated: softmax of the mean of the raw member logits
    probs: np.ndarray  # calibrated ensemble
    sets: np.ndarray  # (N, K) bool conformal sets
    mahalanobis: np.ndarray
    energy: np.ndarray


def fit_calibration(
    basic_logits: np.ndarray,
    premium_logits: np.ndarray,
    pooled0: np.ndarray,
    labels: np.ndarray,
    ood: MahalanobisStats,
    *,
    alpha: float,
    confidence_threshold: float,
    ood_percentile: float,
) -> Calibration:
    labels = np.asarray(labels, dtype=np.int64)
    t_b = fit_temperature(basic_logits, labels)
    t_p = fit_temperature(premium_logits, labels)
    t_e = fit_temperature(ensemble_logits(basic_logits, premium_logits, t_b, t_p), labels)
    probs = softmax(ensemble_logits(basic_logits, premium_logits, t_b, t_p), t_e)
    quantiles = class_conditional_quantiles(probs, labels, alpha)
    maha = mahalanobis_score(pooled0, ood.class_means, ood.precision)
    energy = energy_score(basic_logits)
    return Calibration(
        temperature_basic=t_b,
        temperature_premium=t_p,
        temperature_ensemble=t_e,
        alpha=alpha,
        quantiles=[float(q) for q in quantiles],
        confidence_threshold=confidence_threshold,
        mahalanobis_threshold=float(np.percentile(maha, ood_percentile)),
        energy_threshold=float(np.percentile(energy, ood_percentile)),
        ood_percentile=ood_percentile,
        mahalanobis_shrinkage=ood.shrinkage,
    )


def apply(
    cal: Calibration,
    basic_logits: np.ndarray,
    premium_logits: np.ndarray,
    pooled0: np.ndarray,
    ood: MahalanobisStats,
) -> Outputs:
    probs = softmax(
        ensemble_logits(basic_logits, premium_logits, cal.temperature_basic, cal.temperature_premium),
        cal.temperature_ensemble,
    )
    return Outputs(
        basic_probs=softmax(basic_logits, cal.temperature_basic),
        premium_probs=softmax(premium_logits, cal.temperature_premium),
        ensemble_raw_probs=softmax(ensemble_logits(basic_logits, premium_logits, 1.0, 1.0)),
        probs=probs,
        sets=prediction_sets(probs, np.asarray(cal.quantiles)),
        mahalanobis=mahalanobis_score(pooled0, ood.class_means, ood.precision),
        energy=energy_score(basic_logits),
    )


def referrals(out: Outputs, cal: Calibration, class_names: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Per field: referred? and the model-side reasons, by the daemon's own rule (``model_reasons``)."""
    reasons = []
    for i in range(out.probs.shape[0]):
        cls = int(out.probs[i].argmax())
        reasons.append(
            reason_codes(
                model_reasons(
                    predicted=class_names[cls],
                    confidence=float(out.probs[i, cls]),
                    conformal_set=tuple(n for n, keep in zip(class_names, out.sets[i], strict=True) if keep),
                    basic_label=class_names[int(out.basic_probs[i].argmax())],
                    premium_label=class_names[int(out.premium_probs[i].argmax())],
                    mahalanobis_ood=bool(out.mahalanobis[i] > cal.mahalanobis_threshold),
                    energy_ood=bool(out.energy[i] > cal.energy_threshold),
                    confidence_threshold=cal.confidence_threshold,
                )
            )
        )
    return np.array([bool(r) for r in reasons], dtype=bool), reasons
