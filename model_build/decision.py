"""Calibration and the triage decision statistics, all fitted on the calibration split only.

- Temperature per member (Basic, Premium) by NLL; ensemble logits = mean of the two temperature-scaled
  member logits; then an ensemble temperature on those (``model_build.calibration.fit_temperature``).
- Class-conditional conformal quantiles at ``alpha`` on the ensemble probabilities.
- OOD thresholds: the ``ood_percentile`` of the calibration split's Mahalanobis, energy and stain scores
  (the Mahalanobis and stain statistics themselves come from the held-out selection split, never the
  training images).
- Finalisation: the threshold on the finalisation confidence (min of ensemble and Basic) above which a
  field that nothing else refers is finalised without review, fitted by Learn then Test
  (``cds_daemon.analysis.risk``) so that P(error among finalised > risk_alpha) <= risk_delta. The
  calibration scores, errors and candidate flags are kept, so that a site can refit the rule for its
  own alpha and delta.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cds_daemon.analysis.numeric import energy_score, ensemble_logits, mahalanobis_score, prediction_sets, softmax
from cds_daemon.analysis.risk import finalisation_confidence, fit_finalisation
from cds_daemon.analysis.stain import stain_distance
from cds_daemon.analysis.triage import model_reasons, reason_codes
from model_build.calibration import choose_temperatures
from model_build.conformal import class_conditional_quantiles
from model_build.ood import GaussianStats, MahalanobisStats


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
    stain_threshold: float
    ood_percentile: float
    mahalanobis_shrinkage: float
    finalisation: dict[str, Any]  # FinalisationRule.to_json()
    finalisation_data: dict[str, list[Any]]  # calibration split: confidence, error, candidate
    scaling: dict[str, Any] = field(default_factory=dict)  # what was chosen, and the cross-fitted ECEs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Batch:
    """What the backbone and aggregator give for a batch of fields: all the calibration works from."""

    basic_logits: np.ndarray  # (N, K) view 0
    premium_logits: np.ndarray  # (N, K)
    pooled0: np.ndarray  # (N, D) view-0 pooled features
    stain: np.ndarray  # (N, F) optical-density features of the whole image


@dataclass(frozen=True, eq=False)
class OODStats:
    mahalanobis: MahalanobisStats
    stain: GaussianStats


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
    stain: np.ndarray  # stain-gate Mahalanobis distance


def fit_calibration(
    batch: Batch,
    labels: np.ndarray,
    ood: OODStats,
    *,
    alpha: float,
    ood_percentile: float,
    risk_alpha: float,
    risk_delta: float,
    class_names: tuple[str, ...],
) -> Calibration:
    labels = np.asarray(labels, dtype=np.int64)
    choice = choose_temperatures(batch.basic_logits, batch.premium_logits, labels)  # never worse than raw
    t_b, t_p, t_e = choice.basic, choice.premium, choice.ensemble
    probs = softmax(ensemble_logits(batch.basic_logits, batch.premium_logits, t_b, t_p), t_e)
    quantiles = class_conditional_quantiles(probs, labels, alpha)
    maha = mahalanobis_score(batch.pooled0, ood.mahalanobis.class_means, ood.mahalanobis.precision)
    energy = energy_score(batch.basic_logits)
    stain = stain_distance(batch.stain, ood.stain.mean, ood.stain.precision)
    cal = Calibration(
        temperature_basic=t_b,
        temperature_premium=t_p,
        temperature_ensemble=t_e,
        alpha=alpha,
        quantiles=[float(q) for q in quantiles],
        confidence_threshold=1.0,
        mahalanobis_threshold=float(np.percentile(maha, ood_percentile)),
        energy_threshold=float(np.percentile(energy, ood_percentile)),
        stain_threshold=float(np.percentile(stain, ood_percentile)),
        ood_percentile=ood_percentile,
        mahalanobis_shrinkage=ood.mahalanobis.shrinkage,
        finalisation={},
        finalisation_data={},
        scaling=choice.to_json(),
    )
    # Candidates: fields no other model-side reason refers (the rule as the daemon applies it), scored
    # by the finalisation confidence (the lower of the calibrated ensemble and Basic confidences).
    out = apply(cal, batch, ood)
    _, reasons = referrals(out, cal, class_names, confidence_threshold=0.0)
    candidates = np.array([not r for r in reasons], dtype=bool)
    confidence = finalisation_confidence(out.probs.max(axis=1), out.basic_probs.max(axis=1))
    errors = out.probs.argmax(axis=1) != labels
    rule = fit_finalisation(confidence, errors, candidates, alpha=risk_alpha, delta=risk_delta)
    cal.finalisation = rule.to_json()
    cal.finalisation_data = {
        "confidence": [float(c) for c in confidence],
        "error": [bool(e) for e in errors],
        "candidate": [bool(c) for c in candidates],
    }
    cal.confidence_threshold = 1.0 if rule.threshold is None else rule.threshold
    return cal


def apply(cal: Calibration, batch: Batch, ood: OODStats) -> Outputs:
    probs = softmax(
        ensemble_logits(batch.basic_logits, batch.premium_logits, cal.temperature_basic, cal.temperature_premium),
        cal.temperature_ensemble,
    )
    return Outputs(
        basic_probs=softmax(batch.basic_logits, cal.temperature_basic),
        premium_probs=softmax(batch.premium_logits, cal.temperature_premium),
        ensemble_raw_probs=softmax(ensemble_logits(batch.basic_logits, batch.premium_logits, 1.0, 1.0)),
        probs=probs,
        sets=prediction_sets(probs, np.asarray(cal.quantiles)),
        mahalanobis=mahalanobis_score(batch.pooled0, ood.mahalanobis.class_means, ood.mahalanobis.precision),
        energy=energy_score(batch.basic_logits),
        stain=stain_distance(batch.stain, ood.stain.mean, ood.stain.precision),
    )


def referrals(
    out: Outputs, cal: Calibration, class_names: tuple[str, ...], *, confidence_threshold: float | None = None
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Per field: referred? and the model-side reasons, by the daemon's own rule (``model_reasons``)."""
    reasons = []
    for i in range(out.probs.shape[0]):
        cls = int(out.probs[i].argmax())
        reasons.append(
            reason_codes(
                model_reasons(
                    predicted=class_names[cls],
                    confidence=float(finalisation_confidence(out.probs[i, cls], out.basic_probs[i].max())),
                    conformal_set=tuple(n for n, keep in zip(class_names, out.sets[i], strict=True) if keep),
                    basic_label=class_names[int(out.basic_probs[i].argmax())],
                    premium_label=class_names[int(out.premium_probs[i].argmax())],
                    mahalanobis_ood=bool(out.mahalanobis[i] > cal.mahalanobis_threshold),
                    energy_ood=bool(out.energy[i] > cal.energy_threshold),
                    stain_ood=bool(out.stain[i] > cal.stain_threshold),
                    confidence_threshold=_threshold(cal) if confidence_threshold is None else confidence_threshold,
                )
            )
        )
    return np.array([bool(r) for r in reasons], dtype=bool), reasons


def _threshold(cal: Calibration) -> float:
    """The finalisation threshold; with no rule (nothing can be finalised) every field is below it."""
    threshold = cal.finalisation.get("threshold") if cal.finalisation else cal.confidence_threshold
    return float("inf") if threshold is None else float(threshold)
