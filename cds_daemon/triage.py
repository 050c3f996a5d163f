"""Triage: does a case go to the expert-review worklist, and why.

Policy (DESIGN.md): refer if the conformal set is not exactly one class, if the class is
Indeterminate/Suspicious, if calibrated confidence is below the threshold, if Basic and
Premium disagree, if an OOD score is out of range, or if the quality gate failed. Every
reason that applies is recorded, in this order, with a text a cytopathologist can read.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_daemon.config import TriageSettings
from cds_daemon.engine import Prediction
from cds_daemon.quality import QualityResult

#: Worklist priority per reason: lower is more urgent (suspected malignancy and OOD first).
PRIORITY = {
    "ood_mahalanobis": 1,
    "ood_energy": 1,
    "quality": 2,
    "indeterminate_class": 3,
    "conformal_set_not_singleton": 4,
    "basic_premium_disagree": 4,
    "low_confidence": 5,
}


@dataclass(frozen=True)
class TriageDecision:
    referred: bool
    reasons: tuple[str, ...]
    texts: tuple[str, ...]
    priority: int  # 1 (most urgent) .. 9


def decide(
    pred: Prediction, quality: QualityResult, settings: TriageSettings, bundle_confidence: float
) -> TriageDecision:
    threshold = settings.confidence_threshold if settings.confidence_threshold is not None else bundle_confidence
    found: list[tuple[str, str]] = []
    if settings.refer_conformal_not_singleton and len(pred.conformal_set) != 1:
        members = ", ".join(pred.conformal_set) or "no class"
        found.append(("conformal_set_not_singleton", f"conformal prediction set is not one class ({members})"))
    if settings.refer_indeterminate and pred.label == "indeterminate":
        found.append(("indeterminate_class", "predicted Indeterminate/Suspicious: needs a cytopathologist"))
    if pred.confidence < threshold:
        found.append(("low_confidence", f"calibrated confidence {pred.confidence:.2f} is below {threshold:.2f}"))
    if settings.refer_ensemble_disagreement and not pred.members_agree:
        found.append(
            (
                "basic_premium_disagree",
                f"ensemble members disagree (Basic {pred.basic_label}, Premium {pred.premium_label})",
            )
        )
    if settings.refer_ood and pred.mahalanobis_ood:
        found.append(("ood_mahalanobis", "image features unlike the training data (Mahalanobis)"))
    if settings.refer_ood and pred.energy_ood:
        found.append(("ood_energy", "model output unlike the training data (energy score)"))
    if settings.refer_quality:
        found.extend(quality.reasons)
    priority = 9
    for code, _ in found:
        priority = min(priority, PRIORITY.get(code, PRIORITY["quality"] if code.startswith("quality_") else 5))
    if pred.label == "malignant" and found:
        priority = 1
    return TriageDecision(bool(found), tuple(c for c, _ in found), tuple(t for _, t in found), priority)
